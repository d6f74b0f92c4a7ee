//! Substitution as BuildKit's shell lexer does it (cases after its `envVarTest`/`wordsTest`),
//! with PWD=/home, SHELL=bash, KOREAN=한국어, NULL= (set but empty).

use recast_dockerfile::{Env, process_word, process_words};

fn env() -> Env {
    Env(vec![
        ("PWD".into(), "/home".into()),
        ("SHELL".into(), "bash".into()),
        ("KOREAN".into(), "한국어".into()),
        ("NULL".into(), String::new()),
        ("P".into(), "/usr/local/bin/app.tar.gz".into()),
    ])
}

/// `None` expects an error.
const WORDS: &[(&str, Option<&str>)] = &[
    ("hello", Some("hello")),
    ("he'll'o", Some("hello")),
    ("he'llo", None),
    (r"he\'llo", Some("he'llo")),
    (r"he\\'llo", None),
    (r"abc\tdef", Some("abctdef")),
    (r#""abc\tdef""#, Some(r"abc\tdef")),
    (r#""abc\\tdef""#, Some(r"abc\tdef")),
    (r"'abc\tdef'", Some(r"abc\tdef")),
    (r"hello\", Some("hello")),
    (r"hello\\", Some(r"hello\")),
    (r#""hello"#, None),
    (r#""hello\""#, None),
    (r#""hel'lo""#, Some("hel'lo")),
    ("'hello", None),
    (r"'hello\'", Some(r"hello\")),
    (r#""''""#, Some("''")),
    ("$.", Some("$.")),
    ("he$1x", Some("hex")),
    ("he$.x", Some("he$.x")),
    ("he$pwd.", Some("he.")),
    ("he$PWD", Some("he/home")),
    (r"he\$PWD", Some("he$PWD")),
    (r"he\\$PWD", Some(r"he\/home")),
    (r#""he\$PWD""#, Some("he$PWD")),
    (r#""he\\$PWD""#, Some(r"he\/home")),
    (r"\${}", Some("${}")),
    (r"he\${}xx", Some("he${}xx")),
    ("${}", None),
    ("he${}xx", None),
    ("he${hi}xx", Some("hexx")),
    ("he${PWD}", Some("he/home")),
    ("he${.}", None),
    // Defaults: `:-` treats empty as unset, `-` only unset.
    ("he${XXX:-000}xx", Some("he000xx")),
    ("he${PWD:-000}xx", Some("he/homexx")),
    ("he${NULL:-000}xx", Some("he000xx")),
    ("he${NULL-000}xx", Some("hexx")),
    ("he${XXX-000}xx", Some("he000xx")),
    // Nested.
    ("he${XXX:-$PWD}xx", Some("he/homexx")),
    ("he${XXX:-${PWD:-yyy}}xx", Some("he/homexx")),
    ("he${XXX:-${YYY:-yyy}}xx", Some("heyyyxx")),
    ("${aaa:-${bbb:-ccc}}", Some("ccc")),
    // Alternatives: `:+` treats empty as unset, `+` only unset.
    ("he${XXX:+${PWD}}xx", Some("hexx")),
    ("he${PWD:+${XXX}}xx", Some("hexx")),
    ("he${PWD:+${SHELL}}xx", Some("hebashxx")),
    ("he${XXX:+000}xx", Some("hexx")),
    ("he${PWD:+000}xx", Some("he000xx")),
    ("he${NULL:+000}xx", Some("hexx")),
    ("he${NULL+000}xx", Some("he000xx")),
    ("he${XXX+000}xx", Some("hexx")),
    // Required.
    ("he${XXX?}", None),
    ("he${XXX:?}", None),
    ("he${PWD?}", Some("he/home")),
    ("he${PWD:?}", Some("he/home")),
    ("he${NULL?}", Some("he")),
    ("he${NULL:?}", None),
    // Quotes.
    ("'he${XX}'", Some("he${XX}")),
    (r#""he${PWD}""#, Some("he/home")),
    (r#""he'$PWD'""#, Some("he'/home'")),
    (r#""$PWD""#, Some("/home")),
    ("'$PWD'", Some("$PWD")),
    (r"'\$PWD'", Some(r"\$PWD")),
    (r#"'"hello"'"#, Some(r#""hello""#)),
    // Unterminated and unsupported.
    ("he${PWD", None),
    ("he${PWD:=000}xx", None),
    ("he${XXX:YYY}", None),
    ("he${PWD:+${PWD}:}xx", Some("he/home:xx")),
    (r"he${XXX:-\$PWD:}xx", Some("he$PWD:xx")),
    (r"he${XXX:-\${PWD}z}xx", Some("he${PWDz}xx")),
    ("${{aaa}", None),
    ("${aaa}}", Some("}")),
    ("${aaa", None),
    ("${aaa:-bbb}}", Some("bbb}")),
    ("${aaa:-bbb", None),
    ("${aaa:-bbb ${foo}", None),
    ("${aaa:-bbb {foo}", Some("bbb {foo")),
    ("${:}", None),
    ("${:-bbb}", None),
    // Non-ASCII.
    ("안'녕'하세요", Some("안녕하세요")),
    ("안녕$KOREAN", Some("안녕한국어")),
    ("안녕${XXX:-${YYY:-yyy}}xx", Some("안녕yyyxx")),
    // Positional and special parameters are never set.
    ("${1:-bbb}", Some("bbb")),
    ("$999aaa", Some("aaa")),
    ("${001:-bbb}aaa", Some("bbbaaa")),
    ("$@@@", Some("@@")),
    ("${#:-bbb}", Some("bbb")),
    ("$$", Some("")),
    ("${0:+bbb}", Some("")),
    // Patterns: shortest/longest prefix and suffix, replacement.
    ("${P#*/}", Some("usr/local/bin/app.tar.gz")),
    ("${P##*/}", Some("app.tar.gz")),
    ("${P%.*}", Some("/usr/local/bin/app.tar")),
    ("${P%%.*}", Some("/usr/local/bin/app")),
    ("${P/local/opt}", Some("/usr/opt/bin/app.tar.gz")),
    ("${P//\\//:}", Some(":usr:local:bin:app.tar.gz")),
    ("${P/x*/y}", Some("/usr/local/bin/app.tar.gz")),
    ("${P:#x}", None),
    ("${P/a}", None),
];

#[test]
fn words_substitute_like_buildkit() {
    let env = env();
    let mut failures = Vec::new();
    for (input, want) in WORDS {
        let got = process_word(input, &env, '\\');
        let ok = match (want, &got) {
            (Some(w), Ok(g)) => w == g,
            (None, Err(_)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{input:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_escape_character_can_be_a_backtick() {
    let env = env();
    assert_eq!(
        process_word(r"C:\a`$PWD", &env, '`').as_deref(),
        Ok(r"C:\a$PWD")
    );
    assert_eq!(
        process_word(r#""a`"b""#, &env, '`').as_deref(),
        Ok(r#"a"b"#)
    );
}

#[test]
fn words_split_after_substitution() {
    let mut env = Env::default();
    env.set("hi", "hi");
    env.set("space", "abc  def");
    env.set("leading", "  ab c");
    env.set("trailing", "ab c   ");
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("hello${hi}bye", Some(&["hellohibye"])),
        ("hello${space}bye", Some(&["helloabc", "defbye"])),
        (r#"hello"${space}"bye"#, Some(&["helloabc  defbye"])),
        (r#"hello "${space}"bye"#, Some(&["hello", "abc  defbye"])),
        ("hello${leading}def", Some(&["hello", "ab", "cdef"])),
        (r#"hello"${leading}" def"#, Some(&["hello  ab c", "def"])),
        ("hello${trailing}d", Some(&["helloab", "c", "d"])),
        (r#"hel"lo${trailing}""#, Some(&["helloab c   "])),
        ("hello there     ", Some(&["hello", "there"])),
        (r"hello\ there", Some(&["hello there"])),
        (r#"hello" there"#, None),
        (r#"hello\" there"#, Some(&["hello\"", "there"])),
        (r"hello'\\there'", Some(&[r"hello\\there"])),
        ("hello'$there'", Some(&["hello$there"])),
    ];
    for (input, want) in cases {
        let got = process_words(input, &env, '\\');
        match want {
            Some(w) => {
                let want: Vec<String> = w.iter().map(|s| s.to_string()).collect();
                assert_eq!(got.as_ref().ok(), Some(&want), "{input:?}: {got:?}");
            }
            None => assert!(got.is_err(), "{input:?}: {got:?}"),
        }
    }
}

#[test]
fn unset_and_empty_differ_in_a_dockerfile() {
    let text = "FROM scratch\nARG EMPTY=\nARG UNSET\nENV A=${EMPTY-d} B=${EMPTY:-d} C=${UNSET-d} D=${UNSET+x} E=${EMPTY+x}\n";
    let d = crate::parse_ok(text, &crate::opts(&[]));
    assert_eq!(crate::dump(&d)[1], "4:1 ENV A= B=d C=d D= E=x");
}
