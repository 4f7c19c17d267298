//! Seeded mutations of valid SASL messages and certificates through every parser a client's
//! bytes reach: each must answer (accept or refuse), never panic. The fuzz target
//! `fuzz/fuzz_targets/sasl_exchange.rs` runs the same entry points under libFuzzer.

use crate::scram::{ClientFirst, Credential, Mechanism, ServerExchange};

/// xorshift64*: a small seeded generator (no dependency, same sequence everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let b = *b",=\0%\xff".get(rng.below(6)).unwrap_or(&b'x');
                v.insert(i, b);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let j = rng.below(v.len());
                v.swap(i, j);
            }
            _ => v.extend_from_slice(&seed[..rng.below(seed.len() + 1)]),
        }
    }
    v
}

#[test]
fn mutated_sasl_messages_and_certificates_never_panic() {
    // The start of a certificate, as far as the subject: version, serial, algorithm, issuer
    // CN=a, validity, subject CN=b.
    let name = |cn: u8| {
        [
            0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, cn,
        ]
    };
    let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00];
    tbs.extend_from_slice(&name(b'a'));
    tbs.extend_from_slice(&[0x30, 0x00]);
    tbs.extend_from_slice(&name(b'b'));
    let mut cert = vec![0x30, tbs.len() as u8 + 2, 0x30, tbs.len() as u8];
    cert.extend_from_slice(&tbs);
    let seeds: [&[u8]; 4] = [
        b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawLserver,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"\0alice\0password",
        &cert,
    ];
    assert_eq!(
        crate::tls::subject_dn(&cert),
        Some(vec!["CN=b".to_string()])
    );
    let m = Mechanism::Sha256;
    let cred = Credential::from_salted(m, &[7; 32], vec![1, 2, 3], 4096);
    let mut rng = Rng(0x5eed_5a51);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let seed = seeds[rng.below(seeds.len())];
        let msg = mutate(&mut rng, seed);
        let _ = crate::sasl::parse_plain(&msg);
        let _ = crate::tls::subject_dn(&msg);
        if let Ok(first) = ClientFirst::parse(&msg) {
            accepted += 1;
            let ex = ServerExchange::start(m, first, Some(cred.clone()));
            let _ = ex.finish(&mutate(&mut rng, seeds[1]));
        }
    }
    // The mutations are not all refused: the parsers are exercised past their first check.
    assert!(
        accepted > 100,
        "only {accepted} client-first messages parsed"
    );
}
