//! Fuzz target: any bytes as SASL messages (PLAIN, SCRAM client-first and client-final) and as
//! a client certificate whose subject becomes a principal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use silt_security::scram::{ClientFirst, Credential, Mechanism, ServerExchange};

fuzz_target!(|data: &[u8]| {
    let _ = silt_security::sasl::parse_plain(data);
    let _ = silt_security::tls::subject_dn(data);
    // Split the input into a client-first and a client-final message.
    let cut = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let (first, last) = data.split_at(cut);
    if let Ok(f) = ClientFirst::parse(first) {
        for m in Mechanism::ALL {
            let cred = Credential::from_salted(m, &vec![7; m.hash_len()], vec![1, 2, 3], 4096);
            let ex = ServerExchange::start(m, f.clone(), Some(cred));
            let _ = ex.finish(last.get(1..).unwrap_or_default());
        }
    }
});
