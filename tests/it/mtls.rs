//! Every listener refuses connections without a client certificate, with
//! one from another CA, or with an expired one.

use crate::common::{try_request, Daemon};

const RULES: &str = "rules: [{name: r, prefix: traffic, type: sum, timeframe: 60, limit: 10}]\n";

#[test]
fn refused_on_every_listener() {
    let d = Daemon::start(RULES);
    for (listener, addr) in [("socket", d.socket), ("http", d.http), ("admin", d.admin)] {
        for client in [None, Some("stranger"), Some("expired")] {
            let got = try_request(&d.pki, client, addr, "/status");
            assert!(got.is_err(), "{listener} accepted {client:?}: {got:?}");
        }
    }
    // The right certificate works on the HTTP listeners.
    let (code, _) = try_request(&d.pki, Some("client"), d.http, "/-/healthy").unwrap();
    assert_eq!(code, 200);
    let (code, _) = try_request(&d.pki, Some("client"), d.admin, "/status").unwrap();
    assert_eq!(code, 200);
    assert!(d.metric("ringdb_tls_handshake_failures_total{listener=\"socket\"}") >= 3.0);
}
