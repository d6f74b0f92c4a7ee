//! Mutation fuzzing: arbitrary and mutated specs never panic, and every error has a location
//! inside the file it names.

use crate::project;

/// A small deterministic generator (xorshift64*), so a failure reproduces from its seed.
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

const SEEDS: &[&str] = &[
    include_str!("../../../../examples/hello/recast.hcl"),
    "service \"a\" {\n  image = image.app\n  port = 80\n  rollout {\n    strategy = \"canary\"\n    step { weight = 10 }\n    analysis { max_error_rate = 0.1 }\n  }\n}\n",
    "route \"r\" {\n  listen = \"[::1]:80\"\n  service = service.a\n}\nwebhook \"w\" {\n  url = \"http://x\"\n  events = [\"rollout.step\"]\n}\nregistry {\n  url = \"127.0.0.1:5000/team\"\n  insecure = true\n}\n",
];

/// Fragments worth splicing in: syntax, keywords, odd values, non-ASCII.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "=",
    "\"",
    "\n",
    "${",
    "<<EOT\nx\nEOT\n",
    "image",
    "service",
    "route",
    "guard",
    "registry",
    "step",
    "weight",
    "-1",
    "1e309",
    "0x1",
    "99999999999999999999",
    "\"ü\"",
    "é",
    "\t",
    "#",
    "//",
    "/*",
    "image.",
    "service.x.y",
    "null",
    "true",
    "\"1m\"",
    "\"%\"",
    "a.b[0]",
    "f(x)",
    "1 + 2",
    "\r\n",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(4) {
            0 => {
                let end = (at + rng.below(12)).min(s.len());
                s.drain(at..end);
            }
            1 => {
                let tok: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                s.splice(at..at, tok);
            }
            2 => s.truncate(at),
            _ => {
                if !s.is_empty() {
                    let i = rng.below(s.len());
                    s[i] = char::from(b' ' + rng.below(95) as u8);
                }
            }
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_specs_never_panic_and_errors_are_located() {
    let dir = project(&[]);
    let path = dir.path().join("recast.hcl");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rejected = 0;
    for i in 0..3000 {
        let seed = SEEDS[i % SEEDS.len()];
        let text = mutate(&mut rng, seed);
        std::fs::write(&path, &text).expect("write");
        let result = std::panic::catch_unwind(|| recast_spec::load(&path));
        let Ok(result) = result else {
            panic!("the spec loader panicked on iteration {i} with:\n{text}");
        };
        if let Err(diags) = result {
            rejected += 1;
            let lines = text.split('\n').count();
            for d in diags.iter() {
                assert_eq!(d.file, path, "iteration {i}");
                assert!(
                    d.line >= 1 && d.line <= lines,
                    "line {} of {lines} (iteration {i}):\n{text}",
                    d.line
                );
                assert!(d.column >= 1, "iteration {i}");
                assert!(
                    !d.message.is_empty() && !d.message.ends_with('.'),
                    "{}",
                    d.message
                );
                let _ = d.to_string();
            }
        }
    }
    assert!(
        rejected > 1000,
        "the mutations were too gentle: only {rejected} rejected"
    );
}

#[test]
fn random_bytes_never_panic() {
    let dir = project(&[]);
    let path = dir.path().join("recast.hcl");
    let mut rng = Rng(42);
    for _ in 0..500 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        if let Err(diags) = recast_spec::load(&path) {
            assert!(diags.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
    }
}
