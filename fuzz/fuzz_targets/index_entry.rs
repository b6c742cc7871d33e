//! Index decoders over arbitrary bytes: segment index slots and headers, data file headers,
//! record framing, and the history index's entry and page records (with their MAC).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;
use tlog::history::index::IndexCodec;
use tlog::store::format;

fn codec() -> &'static IndexCodec {
    static C: OnceLock<IndexCodec> = OnceLock::new();
    C.get_or_init(|| IndexCodec::new(&tlog::seal::SealKey::from_bytes([7; 32])))
}

fuzz_target!(|data: &[u8]| {
    let _ = format::IndexEntry::decode(data);
    let _ = format::check_index_header(Path::new("x"), data);
    let _ = format::check_data_header(Path::new("x"), data);
    if let Some(recs) = format::parse_records(data) {
        let refs: Vec<&[u8]> = recs.to_vec();
        assert_eq!(format::frame_records(&refs).unwrap(), data);
    }
    if let Ok(e) = codec().decode_entry("vd", data) {
        assert_eq!(codec().encode_entry("vd", &e), data);
    }
    if let Ok(p) = codec().decode_page("vd", data) {
        let page = p.first().map(|e| tlog::history::index::page_of(e.height)).unwrap_or(0);
        let _ = codec().encode_page("vd", page, &p);
    }
});
