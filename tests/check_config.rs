//! `tlogd --check-config` catches what would make the start fail or run insecurely: a missing
//! tokens file, a tokens file without a token (auth would be off), a key file readable by group
//! or others. Before the fix it passed all three.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn check(cfg: &std::path::Path) -> std::process::Output {
    run(Command::new(tlogd_bin()).arg("--config").arg(cfg).arg("--check-config"))
}

#[test]
fn check_config_catches_token_and_key_problems() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("t.toml");
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let write = |extra: &str| std::fs::write(&cfg, format!("[server]\ndata_dir = \"{}\"\n{extra}", data.display())).unwrap();
    write("");
    assert_ok(&check(&cfg), "defaults");
    write(&format!("auth_tokens_file = \"{}\"\n", d.path().join("missing").display()));
    let o = check(&cfg);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("auth_tokens_file"), "{}", String::from_utf8_lossy(&o.stderr));
    let tokens = d.path().join("tokens");
    std::fs::write(&tokens, "# no token here\n\n").unwrap();
    write(&format!("auth_tokens_file = \"{}\"\n", tokens.display()));
    let o = check(&cfg);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds no token"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&tokens, "t0k3n\n").unwrap();
    let o = check(&cfg);
    assert_ok(&o, "a tokens file with a token");
    assert!(String::from_utf8_lossy(&o.stdout).contains("auth on"));
    let key = data.join("aes.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = check(&cfg);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_ok(&check(&cfg), "a private key file");
}
