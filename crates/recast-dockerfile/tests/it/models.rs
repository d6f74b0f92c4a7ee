//! Dockerfiles and the exact models they resolve to (`{A}` is the host's architecture).

use crate::{GO, NGINX, NODE, arch, dump, opts, parse_ok};

fn check(text: &str, args: &[(&str, &str)], expected: &[&str]) {
    let d = parse_ok(text, &opts(args));
    let expected: Vec<String> = expected.iter().map(|l| l.replace("{A}", arch())).collect();
    assert_eq!(dump(&d), expected, "\nDockerfile:\n{text}");
}

#[test]
fn go_multi_stage() {
    check(
        GO,
        &[],
        &[
            r#"stage 0 build Image("golang:1.22-bookworm") @5:1"#,
            r#"8:1 Workdir("/src")"#,
            r#"9:1 ENV CGO_ENABLED=0 GOFLAGS=-trimpath"#,
            r#"11:1 COPY ["go.mod", "go.sum"] -> "./""#,
            r#"12:1 RUN sh "go mod download" env[TARGETOS=linux TARGETARCH={A} VERSION=dev CGO_ENABLED=0 GOFLAGS=-trimpath]"#,
            r#"13:1 COPY ["."] -> ".""#,
            r#"14:1 RUN sh "GOOS=$TARGETOS GOARCH=$TARGETARCH     go build -ldflags \"-s -w -X main.version=${VERSION}\" -o /out/server ./cmd/server" env[TARGETOS=linux TARGETARCH={A} VERSION=dev CGO_ENABLED=0 GOFLAGS=-trimpath]"#,
            r#"stage 1 certs Image("alpine:3.19") @18:1"#,
            r#"19:1 RUN sh "apk add --no-cache ca-certificates" env[]"#,
            r#"stage 2 - Scratch @21:1"#,
            r#"22:1 COPY ["/etc/ssl/certs/ca-certificates.crt"] -> "/etc/ssl/certs/" from=Stage(1)"#,
            r#"23:1 COPY ["/out/server"] -> "/server" from=Stage(0) chown=65534:65534"#,
            r#"24:1 User("65534:65534")"#,
            r#"25:1 Expose(["8080/tcp"])"#,
            r#"26:1 Healthcheck(Healthcheck { test: Some(["CMD", "/server", "-healthcheck"]), interval: Some(30s), timeout: Some(3s), start_period: None, start_interval: None, retries: Some(3) })"#,
            r#"27:1 Entrypoint(Command { args: ["/server"], shell_form: false })"#,
        ],
    );
}

#[test]
fn go_multi_stage_with_build_args() {
    let d = parse_ok(GO, &opts(&[("GO_VERSION", "1.23"), ("VERSION", "v2")]));
    assert_eq!(d.stages[0].from, "golang:1.23-bookworm");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let line = &dump(&d)[4];
    assert!(line.contains("VERSION=v2"), "{line}");
}

#[test]
fn debian_nginx_site() {
    check(
        NGINX,
        &[],
        &[
            r#"stage 0 - Image("debian:12-slim") @1:1"#,
            r#"2:1 LABEL maintainer=web team <web@example.com> org.opencontainers.image.title=site"#,
            r#"4:1 ENV DEBIAN_FRONTEND=noninteractive"#,
            r#"5:1 RUN sh "apt-get update  && apt-get install -y --no-install-recommends nginx-light  && rm -rf /var/lib/apt/lists/*" env[DEBIAN_FRONTEND=noninteractive]"#,
            r#"8:1 RUN sh "ln -sf /dev/stdout /var/log/nginx/access.log  && ln -sf /dev/stderr /var/log/nginx/error.log" env[DEBIAN_FRONTEND=noninteractive]"#,
            r#"10:1 COPY ["nginx.conf"] -> "/etc/nginx/conf.d/default.conf""#,
            r#"11:1 COPY ["site/"] -> "/var/www/html/""#,
            r#"12:1 Expose(["80/tcp"])"#,
            r#"13:1 StopSignal("SIGQUIT")"#,
            r#"14:1 Cmd(Command { args: ["nginx", "-g", "daemon off;"], shell_form: false })"#,
        ],
    );
}

#[test]
fn node_app() {
    check(
        NODE,
        &[],
        &[
            r#"stage 0 deps Image("node:20-bookworm-slim") @3:1"#,
            r#"4:1 Workdir("/app")"#,
            r#"5:1 COPY ["package.json", "package-lock.json"] -> "./""#,
            r#"6:1 RUN sh "npm ci --omit=dev" env[]"#,
            r#"stage 1 - Image("node:20-bookworm-slim") @8:1"#,
            r#"9:1 ENV NODE_ENV=production PORT=3000"#,
            r#"10:1 Workdir("/app")"#,
            r#"11:1 COPY ["/app/node_modules"] -> "./node_modules" from=Stage(0)"#,
            r#"12:1 COPY ["."] -> "." chown=node:node"#,
            r#"13:1 User("node")"#,
            r#"14:1 Expose(["3000/tcp"])"#,
            r#"15:1 Volume(["/app/data"])"#,
            r#"16:1 Healthcheck(Healthcheck { test: Some(["CMD-SHELL", "node healthcheck.js || exit 1"]), interval: Some(10s), timeout: None, start_period: Some(5s), start_interval: None, retries: None })"#,
            r#"17:1 Cmd(Command { args: ["/bin/sh", "-c", "node server.js"], shell_form: true })"#,
        ],
    );
}

/// A Dockerfile, its build args, and its expected dump.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

/// Smaller cases, one feature each.
#[test]
fn table() {
    let cases: &[Case] = &[
        // Legacy `ENV a b`, with the rest of the line as the value, quotes removed.
        (
            "FROM scratch\nENV A hello \"big\" world\nENV B=$A\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                "2:1 ENV A=hello big world",
                "3:1 ENV B=hello big world",
            ],
        ),
        // ENV values see the environment before the instruction, not their neighbours.
        (
            "FROM scratch\nENV A=1\nENV A=2 B=$A\n",
            &[],
            &["stage 0 - Scratch @1:1", "2:1 ENV A=1", "3:1 ENV A=2 B=1"],
        ),
        // Keywords are case-insensitive; `as` too; stage names are lowercased.
        (
            "from alpine as Builder\nrun true\nFROM BUILDER\n",
            &[],
            &[
                r#"stage 0 builder Image("alpine") @1:1"#,
                r#"2:1 RUN sh "true" env[]"#,
                "stage 1 - Stage(0) @3:1",
            ],
        ),
        // A stage built on another inherits its ENV and SHELL, not its ARGs.
        (
            "FROM alpine AS a\nARG X=1\nENV Y=2\nSHELL [\"/bin/bash\", \"-c\"]\nFROM a\nRUN echo\nCMD x\n",
            &[],
            &[
                r#"stage 0 a Image("alpine") @1:1"#,
                "3:1 ENV Y=2",
                r#"4:1 Shell(["/bin/bash", "-c"])"#,
                "stage 1 - Stage(0) @5:1",
                r#"6:1 RUN sh "echo" shell=["/bin/bash", "-c"] env[Y=2]"#,
                r#"7:1 Cmd(Command { args: ["/bin/bash", "-c", "x"], shell_form: true })"#,
            ],
        ),
        // Exec form, network, ENTRYPOINT in shell form, empty CMD.
        (
            "FROM scratch\nRUN --network=none [\"/bin/true\", \"a b\"]\nENTRYPOINT exec app\nCMD []\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                r#"2:1 RUN exec ["/bin/true", "a b"] net=None env[]"#,
                r#"3:1 Entrypoint(Command { args: ["/bin/sh", "-c", "exec app"], shell_form: true })"#,
                r#"4:1 Cmd(Command { args: [], shell_form: false })"#,
            ],
        ),
        // Invalid JSON is shell form, as in Docker (`[ -f x ]` is a shell test).
        (
            "FROM scratch\nRUN [ -f /x ] && echo yes\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                r#"2:1 RUN sh "[ -f /x ] && echo yes" env[]"#,
            ],
        ),
        // COPY: JSON form, flags, ADD, substitution in sources, dest and chown.
        (
            "FROM scratch\nARG U=app\nCOPY --chown=$U:$U --chmod=640 [\"a b\", \"/dst/\"]\nADD --link app.tar.gz ${U}/\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                r#"3:1 COPY ["a b"] -> "/dst/" chown=app:app chmod=640"#,
                r#"4:1 ADD ["app.tar.gz"] -> "app/""#,
            ],
        ),
        // COPY --from an image, and by index.
        (
            "FROM alpine\nFROM scratch\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\nCOPY --from=0 /bin/sh /bin/\n",
            &[],
            &[
                r#"stage 0 - Image("alpine") @1:1"#,
                "stage 1 - Scratch @2:1",
                r#"3:1 COPY ["/etc/nginx"] -> "/etc/nginx" from=Image("nginx:1")"#,
                r#"4:1 COPY ["/bin/sh"] -> "/bin/" from=Stage(0)"#,
            ],
        ),
        // Global ARGs: only FROM sees them, unless a stage re-declares the name.
        (
            "ARG V=3.19\nARG IMG=alpine:$V\nFROM $IMG\nRUN a\nARG V\nRUN b\n",
            &[],
            &[
                r#"stage 0 - Image("alpine:3.19") @3:1"#,
                r#"4:1 RUN sh "a" env[]"#,
                r#"6:1 RUN sh "b" env[V=3.19]"#,
            ],
        ),
        // Build args override defaults, global and in a stage; ARG without value stays unset.
        (
            "ARG V=1\nFROM alpine:$V\nARG W=x\nARG Z\nENV E=${Z-unset}\nRUN a\n",
            &[("V", "2"), ("W", "y")],
            &[
                r#"stage 0 - Image("alpine:2") @2:1"#,
                "5:1 ENV E=unset",
                r#"6:1 RUN sh "a" env[W=y E=unset]"#,
            ],
        ),
        // ARG defaults substitute; ENV wins over ARG after it.
        (
            "FROM scratch\nARG A=1\nARG B=${A}0\nENV A=env\nRUN x\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                "4:1 ENV A=env",
                r#"5:1 RUN sh "x" env[A=env B=10]"#,
            ],
        ),
        // WORKDIR/USER/STOPSIGNAL/VOLUME/EXPOSE/LABEL substitute; EXPOSE splits and expands.
        (
            "FROM scratch\nENV D=/srv P=\"80 53/udp\" S=TERM\nWORKDIR $D/app\nUSER ${U:-nobody}\nSTOPSIGNAL SIG$S\nVOLUME $D/data /cache\nEXPOSE $P 8000-8001\nLABEL \"a b\"=\"$D\" c='$D'\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                "2:1 ENV D=/srv P=80 53/udp S=TERM",
                r#"3:1 Workdir("/srv/app")"#,
                r#"4:1 User("nobody")"#,
                r#"5:1 StopSignal("SIGTERM")"#,
                r#"6:1 Volume(["/srv/data", "/cache"])"#,
                r#"7:1 Expose(["80/tcp", "53/udp", "8000/tcp", "8001/tcp"])"#,
                "8:1 LABEL a b=/srv c=$D",
            ],
        ),
        // MAINTAINER is recorded as is (Docker writes it to the config's author).
        (
            "FROM scratch\nMAINTAINER Jane Doe <jane@example.com>\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                r#"2:1 Maintainer("Jane Doe <jane@example.com>")"#,
            ],
        ),
        // HEALTHCHECK NONE, and every option.
        (
            "FROM scratch\nHEALTHCHECK NONE\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --start-interval=2s --retries=0 CMD [\"a\"]\n",
            &[],
            &[
                "stage 0 - Scratch @1:1",
                "2:1 Healthcheck(Healthcheck { test: None, interval: None, timeout: None, start_period: None, start_interval: None, retries: None })",
                r#"3:1 Healthcheck(Healthcheck { test: Some(["CMD", "a"]), interval: Some(90s), timeout: Some(500ms), start_period: None, start_interval: Some(2s), retries: Some(0) })"#,
            ],
        ),
        // `# escape=`` ` makes the backtick the escape and continuation character.
        (
            "# escape=`\nFROM scratch\nCOPY C:\\src\\ `\n   C:\\dst\\\nENV A=a`$b\n",
            &[],
            &[
                "stage 0 - Scratch @2:1",
                r#"3:1 COPY ["C:\\src\\"] -> "C:\\dst\\""#,
                "5:1 ENV A=a$b",
            ],
        ),
        // Comments and blank lines inside continuations; indented instructions; CRLF; BOM.
        (
            "\u{feff}FROM scratch\r\n  RUN a \\\r\n# comment\r\n\r\n    b\r\n",
            &[],
            &["stage 0 - Scratch @1:1", r#"2:3 RUN sh "a     b" env[]"#],
        ),
        // An escaped escape at the end of a line does not continue it.
        (
            "FROM scratch\nENV A=x\\\\\nENV B=y\n",
            &[],
            &["stage 0 - Scratch @1:1", r"2:1 ENV A=x\", "3:1 ENV B=y"],
        ),
        // Parser directives only at the very top; later ones are comments.
        (
            "# syntax=docker/dockerfile:1\n# check=skip=all\nFROM scratch\n# escape=`\nENV A=\\$x\n",
            &[],
            &["stage 0 - Scratch @3:1", "5:1 ENV A=$x"],
        ),
        // Proxy build args reach RUN without an ARG, and do not warn.
        (
            "FROM scratch\nRUN x\n",
            &[("HTTP_PROXY", "http://p:3128")],
            &[
                "stage 0 - Scratch @1:1",
                r#"2:1 RUN sh "x" env[HTTP_PROXY=http://p:3128]"#,
            ],
        ),
        // The automatic platform args, in FROM and (re-declared) in a stage.
        (
            "FROM --platform=$BUILDPLATFORM alpine:$TARGETARCH\nARG TARGETPLATFORM\nRUN x\n",
            &[],
            &[
                r#"stage 0 - Image("alpine:{A}") @1:1"#,
                r#"3:1 RUN sh "x" env[TARGETPLATFORM=linux/{A}]"#,
            ],
        ),
    ];
    for (text, args, expected) in cases {
        check(text, args, expected);
    }
}

#[test]
fn base_environment_takes_part_in_substitution() {
    let mut o = opts(&[]);
    o.base_env.insert(
        "debian:12".into(),
        vec![("PATH".into(), "/usr/bin:/bin".into())],
    );
    let d = parse_ok("FROM debian:12\nENV PATH=/opt/bin:$PATH\nRUN x\n", &o);
    assert_eq!(
        dump(&d)[2],
        r#"3:1 RUN sh "x" env[PATH=/opt/bin:/usr/bin:/bin]"#
    );
}

#[test]
fn undeclared_build_args_are_warnings() {
    let d = parse_ok(
        "ARG USED\nFROM scratch\n",
        &opts(&[("USED", "1"), ("UNUSED", "2"), ("TARGETARCH", "s390x")]),
    );
    assert_eq!(
        d.warnings,
        [
            format!(
                "build arg `TARGETARCH` is ignored: recast builds for the host platform (linux/{})",
                arch()
            ),
            "build arg `UNUSED` is not declared by any `ARG` in Dockerfile".to_string(),
        ]
    );
}

#[test]
fn images_lists_bases_and_copy_sources() {
    let d = parse_ok(GO, &opts(&[]));
    assert_eq!(d.images(), ["alpine:3.19", "golang:1.22-bookworm"]);
}
