//! Mutation fuzzing: mutated real-world Dockerfiles never panic, and every error has a location
//! inside the file (a line that exists, a column on it or just past its end).

use std::path::Path;

use recast_dockerfile::{Ignore, Options};

use crate::{GO, NGINX, NODE};

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

const TOKENS: &[&str] = &[
    "\\\n",
    "\\",
    "`",
    "\n",
    "\r\n",
    " ",
    "\t",
    "#",
    "# escape=`\n",
    "\"",
    "'",
    "$",
    "${",
    "}",
    "${A:-",
    "${A:+x}",
    "${A?}",
    "${A#*}",
    "${A//x/y}",
    "[",
    "]",
    "[\"a\", \"b\"]",
    "[1]",
    "=",
    "--",
    "--from=0",
    "--from=x",
    "--chown=",
    "--chmod=9",
    "--platform=",
    "--mount=x",
    "--network=none",
    "--interval=",
    "<<EOF\n",
    "<<-X ",
    "FROM ",
    "AS ",
    "ARG ",
    "ENV ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "NONE",
    "CMD ",
    "SHELL ",
    "EXPOSE ",
    "LABEL ",
    "é",
    "한국어",
    "\u{feff}",
    "\u{0}",
    "😀",
    "scratch",
    "0",
    "99999999999999999999",
    "-1",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(5) {
        let at = rng.below(s.len() + 1);
        match rng.below(5) {
            0 => {
                let end = (at + rng.below(16)).min(s.len());
                s.drain(at..end);
            }
            1 | 2 => {
                let tok: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                s.splice(at..at, tok);
            }
            3 => s.truncate(at),
            _ => {
                // Duplicate a slice somewhere else.
                let a = rng.below(s.len() + 1);
                let b = (a + rng.below(40)).min(s.len());
                let piece: Vec<char> = s[a..b].to_vec();
                let at = at.min(s.len());
                s.splice(at..at, piece);
            }
        }
    }
    s.into_iter().collect()
}

/// Parse `text`: no panic, and every error located inside it. Returns whether it had errors.
fn check_located(text: &str, seed: u64) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    let opts = Options {
        args: [("VERSION".to_string(), "1".to_string())].into(),
        ..Options::default()
    };
    let result = std::panic::catch_unwind(|| {
        recast_dockerfile::parse_with(Path::new("Dockerfile"), text, &opts)
    });
    let Ok(result) = result else {
        panic!("seed {seed}: panic on:\n{text:?}");
    };
    let diags = match result {
        Ok(d) => {
            // A model is usable: stage order works for every named stage.
            assert!(d.stage_order(None).is_ok(), "seed {seed}");
            for s in &d.stages {
                if let Some(n) = &s.name {
                    assert!(d.stage_order(Some(n)).is_ok(), "seed {seed}");
                }
            }
            return false;
        }
        Err(diags) => diags,
    };
    assert!(!diags.is_empty(), "seed {seed}: empty error list");
    for d in diags.iter() {
        assert!(
            d.line >= 1 && d.line <= lines.len().max(1),
            "seed {seed}: line {} outside the file in {text:?}: {d}",
            d.line
        );
        let len = lines
            .get(d.line - 1)
            .map_or(0, |l| l.trim_end_matches('\r').chars().count());
        assert!(
            d.column >= 1 && d.column <= len + 1,
            "seed {seed}: column {} past line {} ({len} chars) in {text:?}: {d}",
            d.column,
            d.line
        );
        assert!(
            d.message.chars().next().is_some_and(|c| !c.is_uppercase())
                && !d.message.ends_with('.'),
            "seed {seed}: message style: {}",
            d.message
        );
        let _ = d.to_string();
    }
    true
}

#[test]
fn mutated_dockerfiles_never_panic_and_errors_are_located() {
    let seeds = [GO, NGINX, NODE];
    let mut failed = 0;
    for seed in 0..3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let base = seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, base);
        if check_located(&text, seed) {
            failed += 1;
        }
    }
    // Both paths are exercised: many mutants are errors, many still parse.
    assert!(
        (600..2400).contains(&failed),
        "{failed} of 3000 mutants failed"
    );
}

#[test]
fn random_token_soup_never_panics() {
    for seed in 0..1500u64 {
        let mut rng = Rng(seed.wrapping_add(77) | 1);
        let mut text = String::new();
        for _ in 0..rng.below(40) {
            text.push_str(TOKENS[rng.below(TOKENS.len())]);
        }
        check_located(&text, seed);
        // The same soup as a .dockerignore: never a panic, errors located.
        if let Err(e) = Ignore::parse(Path::new(".dockerignore"), &text) {
            for d in e.iter() {
                assert!(d.line >= 1 && d.column >= 1, "seed {seed}: {d}");
            }
        } else if let Ok(ig) = Ignore::parse(Path::new(".dockerignore"), &text) {
            let _ = ig.is_ignored("a/b/c", true);
            let _ = ig.is_ignored("x", false);
        }
    }
}
