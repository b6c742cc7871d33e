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
    if std::env::var("CARGO_FEATURE_DPDK").is_ok() {
        dpdk::build();
    }
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

/// The DPDK binding (feature "dpdk"): bindgen over dpdk/wrapper.h and the C shim built with
/// cc, both with the whole `pkg-config --cflags libdpdk` (it carries `-include rte_config.h`
/// and `-march`); every library of `pkg-config --libs libdpdk` linked as a shared library, so
/// the poll-mode drivers load from DPDK's plugin directory.
#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;
    use std::process::Command;

    fn pkg(arg: &str) -> Vec<String> {
        let o = Command::new("pkg-config").args([arg, "libdpdk"]).output().expect("pkg-config (install pkg-config and libdpdk-dev)");
        assert!(o.status.success(), "pkg-config {arg} libdpdk failed: install libdpdk-dev: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect()
    }

    pub fn build() {
        println!("cargo:rerun-if-changed=dpdk/wrapper.h");
        println!("cargo:rerun-if-changed=dpdk/shim.h");
        println!("cargo:rerun-if-changed=dpdk/shim.c");
        let cflags = pkg("--cflags");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let b = bindgen::Builder::default()
            .header("dpdk/wrapper.h")
            .clang_args(cflags.iter())
            .clang_arg("-Idpdk")
            .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_eth_dev_count_avail|rte_eth_dev_configure|rte_eth_rx_queue_setup|rte_eth_tx_queue_setup|rte_eth_dev_start|rte_eth_dev_stop|rte_eth_dev_close|rte_eth_macaddr_get|rte_eth_dev_socket_id|rte_eth_stats_get|rte_eth_promiscuous_enable|rte_eth_dev_info_get|rte_eth_dev_get_mtu|rte_eth_promiscuous_enable|rte_pktmbuf_pool_create|rte_mempool_free|rte_socket_id|rte_strerror|rte_get_main_lcore|rte_get_next_lcore|rte_lcore_to_cpu_id|rte_eal_remote_launch|rte_eal_wait_lcore|rte_eth_dev_rx_intr_ctl_q_get_fd|tlog_.*")
            .allowlist_var("RTE_MAX_LCORE")
            .allowlist_type("rte_eth_conf|rte_eth_stats|rte_ether_addr|rte_eth_dev_info|rte_eth_rxconf|rte_eth_txconf")
            .opaque_type("rte_arp_hdr|rte_arp_ipv4|rte_l2tpv2_combined_msg_hdr|rte_gtp_psc_generic_hdr")
            .layout_tests(false)
            .derive_default(true)
            .generate()
            .expect("bindgen over dpdk/wrapper.h");
        b.write_to_file(out.join("dpdk_bindings.rs")).expect("write dpdk_bindings.rs");
        let mut c = cc::Build::new();
        c.file("dpdk/shim.c").include("dpdk");
        for f in &cflags {
            c.flag(f);
        }
        c.compile("tlog_dpdk_shim");
        for l in pkg("--libs") {
            if let Some(name) = l.strip_prefix("-l") {
                println!("cargo:rustc-link-lib=dylib={name}");
            } else if let Some(dir) = l.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
    }
}

#[cfg(not(feature = "dpdk"))]
mod dpdk {
    pub fn build() {}
}
