//! Board profiles: TOML text parsed and validated.

use boards::BoardProfile;

use super::outcome;

pub(crate) static DICT: &[&[u8]] = &[
    b"[capture]",
    b"[sector]",
    b"[model]",
    b"[clinical]",
    b"[compute]",
    b"[serial]",
    b"[trust]",
    b"[bundle]",
    b"[live_view]",
    b"[[trust.keys]]",
    b" = ",
    b"\"",
    b"'''",
    b"true",
    b"false",
    b"nan",
    b"inf",
    b"-inf",
    b"1e400",
    b"-1",
    b"0",
    b"18446744073709551615",
    b"4294967296",
    b"\n",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b".",
    b"0x",
    b"1979-05-27T07:32:00Z",
];

pub(crate) fn board(data: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(data) else {
        return "not UTF-8".into();
    };
    match BoardProfile::from_toml_str(text, "fuzz".into(), None) {
        Ok(p) => {
            // A profile that validated must validate again (no hidden state).
            assert!(p.validate().is_ok(), "a validated profile fails validate()");
            "ok".into()
        }
        // A TOML error quotes the offending line between `|` marks; the explanation follows.
        Err(e) => {
            let msg = e.to_string();
            outcome("error:", msg.rsplit('|').next().unwrap_or(&msg))
        }
    }
}
