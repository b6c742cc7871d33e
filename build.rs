//! Build script: compiles `schema/tlog.capnp` with capnpc when the `capnp` tool is installed.
//!
//! Without the tool (a machine with only the Rust toolchain), the checked-in module
//! `src/tlog_capnp.rs` is used instead. With the tool, the freshly generated module is used and
//! compared with the checked-in one: a difference is a warning, and an error when `CI=true` or
//! `TLOG_STRICT_SCHEMA=1` (so CI fails on a stale checked-in module). Refresh it with
//! `scripts/regen-schema.sh`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=schema/tlog.capnp");
    println!("cargo:rerun-if-changed=src/tlog_capnp.rs");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=TLOG_STRICT_SCHEMA");
    println!("cargo::rustc-check-cfg=cfg(tlog_generated_schema)");

    let have_capnp = Command::new("capnp").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !have_capnp {
        println!("cargo:warning=capnp tool not found: using the checked-in src/tlog_capnp.rs");
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    capnpc::CompilerCommand::new().src_prefix("schema").file("schema/tlog.capnp").output_path(&out).run().expect("capnp compile of schema/tlog.capnp failed");
    let generated = std::fs::read(out.join("tlog_capnp.rs")).expect("generated tlog_capnp.rs");
    let checked_in = std::fs::read("src/tlog_capnp.rs").unwrap_or_default();
    if generated != checked_in {
        let strict = std::env::var("CI").map(|v| v == "true").unwrap_or(false) || std::env::var("TLOG_STRICT_SCHEMA").map(|v| v == "1").unwrap_or(false);
        if strict {
            panic!("src/tlog_capnp.rs is stale against schema/tlog.capnp: run scripts/regen-schema.sh and commit it");
        }
        println!("cargo:warning=src/tlog_capnp.rs is stale: run scripts/regen-schema.sh");
    }
    println!("cargo:rustc-cfg=tlog_generated_schema");
}
