//! Everything recast does not build, and every malformed instruction, as an exact located error.

use std::path::Path;

use crate::{errors, opts};

fn check(text: &str, expected: &[&str]) {
    assert_eq!(errors(text, &opts(&[])), expected, "\nDockerfile:\n{text}");
}

#[test]
fn unsupported_instructions_and_flags() {
    let cases: &[(&str, &[&str])] = &[
        (
            "FROM scratch\nONBUILD RUN make\n",
            &[
                "Dockerfile:2:1: `ONBUILD` is not supported | hint: recast images are not used as bases for later Dockerfile builds: run these steps in the Dockerfile that needs them",
            ],
        ),
        (
            "FROM scratch\nRUN <<EOF\necho hi\nEOF\nRUNN x\n",
            &[
                "Dockerfile:2:5: heredocs in `RUN` are not supported | hint: write the commands on one line joined with `&&`, or put them in a script file and COPY it",
                "Dockerfile:5:1: unknown instruction `RUNN` | hint: did you mean `RUN`?",
            ],
        ),
        (
            "FROM scratch\nCOPY <<-EOT /x\n",
            &[
                "Dockerfile:2:6: heredocs in `COPY` are not supported | hint: put the content in a file in the build context and COPY it",
            ],
        ),
        (
            "FROM scratch\nRUN --mount=type=cache,target=/root/.cache make\n",
            &[
                "Dockerfile:2:5: `RUN --mount` is not supported | hint: copy what the step needs into the image with COPY; caches and secrets mounts are not available",
            ],
        ),
        (
            "FROM scratch\nRUN --security=insecure make\n",
            &[
                "Dockerfile:2:5: `RUN --security` is not supported | hint: build steps always run unprivileged",
            ],
        ),
        (
            "FROM scratch\nRUN --device=/dev/fuse make\n",
            &["Dockerfile:2:5: `RUN --device` is not supported | hint: build steps get no devices"],
        ),
        (
            "FROM scratch\nRUN --network=bridge make\n",
            &[
                "Dockerfile:2:5: unknown network mode `bridge` | hint: use `--network=default`, `none` or `host`",
            ],
        ),
        (
            "FROM scratch\nRUN --netwrok=none make\n",
            &[
                "Dockerfile:2:5: unknown flag `--netwrok` for `RUN` | hint: did you mean `--network`?",
            ],
        ),
        (
            "FROM scratch\nCOPY --exclude=*.md . /app\n",
            &[
                "Dockerfile:2:6: `COPY --exclude` is not supported | hint: list the files to leave out in .dockerignore, or COPY the ones you want",
            ],
        ),
        (
            "FROM scratch\nCOPY --parents a/b /app/\n",
            &[
                "Dockerfile:2:6: `COPY --parents` is not supported | hint: COPY each directory to its destination",
            ],
        ),
        (
            "FROM scratch\nADD --checksum=sha256:abc x.tar /\n",
            &[
                "Dockerfile:2:5: `ADD --checksum` is not supported | hint: ADD takes local files only",
            ],
        ),
        (
            "FROM scratch\nADD --keep-git-dir https://github.com/a/b.git /src\n",
            &[
                "Dockerfile:2:5: `ADD --keep-git-dir` is not supported | hint: ADD takes local files only",
            ],
        ),
        (
            "FROM scratch\nADD --unpack=false x.tar /\n",
            &[
                "Dockerfile:2:5: `ADD --unpack` is not supported | hint: ADD extracts local tar archives; use COPY to copy one as is",
            ],
        ),
        (
            "FROM scratch\nADD https://example.com/a.tar.gz /\n",
            &[
                "Dockerfile:2:5: `ADD` of a URL (`https://example.com/a.tar.gz`) is not supported | hint: download it in a RUN step, or put the file in the build context and COPY it",
            ],
        ),
        (
            "FROM scratch\nADD git@github.com:a/b.git /src\n",
            &[
                "Dockerfile:2:5: `ADD` of a URL (`git@github.com:a/b.git`) is not supported | hint: download it in a RUN step, or put the file in the build context and COPY it",
            ],
        ),
        (
            "FROM scratch\nADD --from=build /a /b\n",
            &[
                "Dockerfile:2:5: unknown flag `--from` for `ADD` | hint: `ADD` takes --chown, --chmod, --link, --exclude, --checksum, --keep-git-dir, --unpack",
            ],
        ),
        (
            "FROM --platform=linux/s390x alpine\n",
            &[
                "Dockerfile:1:6: recast builds for the host platform (linux/{A}) only, not `linux/s390x` | hint: remove `--platform`, or build on a linux/s390x machine",
            ],
        ),
        (
            "FROM scratch\nCOPY --chmod=u+x a /a\n",
            &[
                "Dockerfile:2:6: `--chmod=u+x` is not octal permission bits | hint: write the mode in octal, like `--chmod=0755`",
            ],
        ),
        (
            "ARG B=build\nFROM scratch\nCOPY --from=$B /a /a\n",
            &[
                "Dockerfile:3:6: variables are not substituted in `--from` | hint: define a stage with `FROM ${VAR} AS name` (a global ARG) and copy from it",
            ],
        ),
        (
            "FROM scratch\nENV --x=1 A=b\n",
            &["Dockerfile:2:5: unknown flag `--x` for `ENV` | hint: `ENV` takes no flags"],
        ),
        (
            "FROM scratch\nHEALTHCHECK --interval=5s NONE\n",
            &["Dockerfile:2:13: `HEALTHCHECK NONE` takes no flags"],
        ),
        (
            "FROM scratch\nHEALTHCHECK --intervall=5s CMD true\n",
            &[
                "Dockerfile:2:13: unknown flag `--intervall` for `HEALTHCHECK` | hint: did you mean `--interval`?",
            ],
        ),
        (
            "FROM scratch\nFOO bar\n",
            &[
                "Dockerfile:2:1: unknown instruction `FOO` | hint: the instructions are ADD, ARG, CMD, COPY, ENTRYPOINT, ENV, EXPOSE, FROM, HEALTHCHECK, LABEL, MAINTAINER, ONBUILD, RUN, SHELL, STOPSIGNAL, USER, VOLUME, WORKDIR",
            ],
        ),
        (
            "FROM scratch\nCOPPY a b\n",
            &["Dockerfile:2:1: unknown instruction `COPPY` | hint: did you mean `COPY`?"],
        ),
    ];
    for (text, expected) in cases {
        let expected: Vec<String> = expected
            .iter()
            .map(|e| e.replace("{A}", crate::arch()))
            .collect();
        assert_eq!(errors(text, &opts(&[])), expected, "\nDockerfile:\n{text}");
    }
}

#[test]
fn malformed_instructions() {
    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "Dockerfile:1:1: the Dockerfile has no instructions | hint: a Dockerfile starts with `FROM IMAGE` (after any `ARG`s)",
            ],
        ),
        (
            "# only a comment\nARG A=1\n",
            &[
                "Dockerfile:1:1: the Dockerfile has no `FROM` instruction | hint: a Dockerfile starts with `FROM IMAGE` (after any `ARG`s)",
            ],
        ),
        (
            "RUN make\nFROM scratch\n",
            &[
                "Dockerfile:1:1: `RUN` before the first `FROM` | hint: only `ARG` may come before the first `FROM`",
            ],
        ),
        (
            "FROM alpine AS\n",
            &[
                "Dockerfile:1:6: `FROM` takes an image and optionally `AS name` | hint: write `FROM IMAGE` or `FROM IMAGE AS NAME`",
            ],
        ),
        (
            "FROM alpine AS 1st\n",
            &[
                "Dockerfile:1:16: invalid stage name `1st` | hint: a stage name starts with a letter and has only letters, digits, `-`, `_` and `.`",
            ],
        ),
        (
            "FROM alpine AS a\nFROM alpine AS A\n",
            &[
                "Dockerfile:2:16: duplicate stage name `a` | hint: a stage named `a` starts on line 1",
            ],
        ),
        (
            "ARG IMG\nFROM $IMG\n",
            &[
                "Dockerfile:2:6: the base `$IMG` is empty after substitution | hint: give the ARG a default before the first FROM, or set it in `args`",
            ],
        ),
        (
            "ARG V=Latest!\nFROM debian:$V\n",
            &[
                "Dockerfile:2:6: invalid image reference `debian:Latest!`: `Latest!` is not a tag | hint: write NAME[:TAG][@sha256:DIGEST], like `debian:12`",
            ],
        ),
        (
            "FROM Debian:12\n",
            &[
                "Dockerfile:1:6: invalid image reference `Debian:12`: `Debian` is not a repository name (lowercase letters, digits, `.`, `_`, `-`) | hint: write NAME[:TAG][@sha256:DIGEST], like `debian:12`",
            ],
        ),
        ("FROM\n", &["Dockerfile:1:1: `FROM` needs an image"]),
        (
            "FROM scratch\nCOPY onlyone\n",
            &[
                "Dockerfile:2:1: `COPY` needs at least one source and a destination | hint: write `COPY SRC... DEST`",
            ],
        ),
        (
            "FROM scratch\nENV A\n",
            &["Dockerfile:2:5: `ENV A` has no value | hint: write `ENV A=VALUE`"],
        ),
        (
            "FROM scratch\nENV A=1 B\n",
            &[
                "Dockerfile:2:9: `B` is not of the form name=value | hint: every word after `ENV` is NAME=VALUE (quote values with spaces)",
            ],
        ),
        (
            "FROM scratch\nLABEL =x\n",
            &["Dockerfile:2:7: `LABEL` names cannot be blank"],
        ),
        (
            "FROM scratch\nARG =x\n",
            &["Dockerfile:2:5: `ARG` names cannot be blank"],
        ),
        (
            "FROM scratch\nENV A=${B\n",
            &[
                "Dockerfile:2:5: cannot substitute variables in `${B`: missing `}` in a `${…}` substitution",
            ],
        ),
        (
            "FROM scratch\nWORKDIR ${DIR:?set DIR}\n",
            &["Dockerfile:2:9: cannot substitute variables in `${DIR:?set DIR}`: DIR: set DIR"],
        ),
        (
            "FROM scratch\nUSER 'app\n",
            &["Dockerfile:2:6: cannot substitute variables in `'app`: unterminated single quote"],
        ),
        (
            "FROM scratch\nCMD [\"a\", 1]\n",
            &[
                "Dockerfile:2:5: the JSON array of `CMD` must hold strings only | hint: quote every element: [\"cmd\", \"arg\"]",
            ],
        ),
        (
            "FROM scratch\nSHELL /bin/bash -c\n",
            &[
                "Dockerfile:2:7: `SHELL` must be a JSON array of strings | hint: write `SHELL [\"/bin/bash\", \"-c\"]`",
            ],
        ),
        (
            "FROM scratch\nSTOPSIGNAL SIGFOO\n",
            &[
                "Dockerfile:2:12: unknown signal `SIGFOO` | hint: write a signal name like SIGTERM or a number",
            ],
        ),
        (
            "FROM scratch\nEXPOSE 80/http 70000\n",
            &["Dockerfile:2:8: invalid protocol `http` in `80/http`: use tcp, udp or sctp"],
        ),
        (
            "FROM scratch\nEXPOSE 70000\n",
            &["Dockerfile:2:8: invalid port `70000`: ports are numbers from 1 to 65535"],
        ),
        (
            "FROM scratch\nHEALTHCHECK --interval=5 CMD true\n",
            &[
                "Dockerfile:2:13: invalid duration `5` for `--interval` | hint: write a duration like 30s, 1m30s or 500ms",
            ],
        ),
        (
            "FROM scratch\nHEALTHCHECK --timeout=1us CMD true\n",
            &["Dockerfile:2:13: `--timeout` cannot be less than 1ms"],
        ),
        (
            "FROM scratch\nHEALTHCHECK --retries=-1 CMD true\n",
            &[
                "Dockerfile:2:13: `--retries=-1` is not a number of retries | hint: write a whole number, like `--retries=3`",
            ],
        ),
        (
            "FROM scratch\nHEALTHCHECK CMD\n",
            &["Dockerfile:2:13: `HEALTHCHECK CMD` needs a command"],
        ),
        (
            "FROM scratch\nHEALTHCHECK CURL x\n",
            &[
                "Dockerfile:2:13: unknown `HEALTHCHECK` type `CURL` | hint: write `HEALTHCHECK CMD …` or `HEALTHCHECK NONE`",
            ],
        ),
        (
            "FROM scratch\nHEALTHCHECK NONE x\n",
            &["Dockerfile:2:18: `HEALTHCHECK NONE` takes no arguments"],
        ),
        (
            "FROM scratch\nCOPY --chown a b\n",
            &["Dockerfile:2:6: flag `--chown` needs a value | hint: write `--chown=VALUE`"],
        ),
        (
            "FROM scratch\nCOPY --link=maybe a b\n",
            &["Dockerfile:2:6: `--link` takes true or false, not `maybe`"],
        ),
        (
            "FROM scratch\nCOPY --chown=a --chown=b a b\n",
            &["Dockerfile:2:16: flag `--chown` is given twice"],
        ),
        (
            "FROM alpine\nCOPY --from=1 /a /b\n",
            &[
                "Dockerfile:2:6: `--from=1` names stage 1, which does not come before this stage (0) | hint: stages count from 0; copy from an earlier stage",
            ],
        ),
        (
            "FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\n",
            &[
                "Dockerfile:2:6: `--from=b` names a stage that does not come before this one | hint: move stage `b` above the stage that copies from it",
            ],
        ),
        (
            "# escape=x\nFROM scratch\n",
            &[
                "Dockerfile:1:1: invalid escape character `x` | hint: the escape character is \\ (the default) or ` (a backtick)",
            ],
        ),
        (
            "# escape=\\\n# escape=`\nFROM scratch\n",
            &["Dockerfile:2:1: only one `escape` parser directive can be used"],
        ),
        (
            "FROM scratch\nWORKDIR\nUSER\nSTOPSIGNAL\nRUN\nCMD\nEXPOSE\nVOLUME\nMAINTAINER\nLABEL\nENV\nARG\nHEALTHCHECK\n",
            &[
                "Dockerfile:2:1: `WORKDIR` needs a path",
                "Dockerfile:3:1: `USER` needs a user",
                "Dockerfile:4:1: `STOPSIGNAL` needs a signal",
                "Dockerfile:5:1: `RUN` needs a command",
                "Dockerfile:6:1: `CMD` needs a command",
                "Dockerfile:7:1: `EXPOSE` needs a port",
                "Dockerfile:8:1: `VOLUME` needs a path",
                "Dockerfile:9:1: `MAINTAINER` needs a name",
                "Dockerfile:10:1: `LABEL` needs a name and a value",
                "Dockerfile:11:1: `ENV` needs a name and a value",
                "Dockerfile:12:1: `ARG` needs a name",
                "Dockerfile:13:1: `HEALTHCHECK` needs `CMD …` or `NONE`",
            ],
        ),
    ];
    for (text, expected) in cases {
        check(text, expected);
    }
}

/// All problems at once, and one broken stage does not cascade.
#[test]
fn every_error_is_reported_once() {
    check(
        "FROM alpine AS 9x\nRUN --mount=type=ssh x\nONBUILD RUN y\nFROM 9x\nCOPY --from=9x a b\nENV A\n",
        &[
            "Dockerfile:1:16: invalid stage name `9x` | hint: a stage name starts with a letter and has only letters, digits, `-`, `_` and `.`",
            "Dockerfile:2:5: `RUN --mount` is not supported | hint: copy what the step needs into the image with COPY; caches and secrets mounts are not available",
            "Dockerfile:3:1: `ONBUILD` is not supported | hint: recast images are not used as bases for later Dockerfile builds: run these steps in the Dockerfile that needs them",
            "Dockerfile:6:5: `ENV A` has no value | hint: write `ENV A=VALUE`",
        ],
    );
}

/// Errors render exactly like spec errors: location, the line, a caret under the culprit, a hint.
#[test]
fn errors_render_with_line_and_caret() {
    let err = recast_dockerfile::parse(
        Path::new("app/Dockerfile"),
        "FROM scratch\nCOPY --from=build \\\n     --parents a /b\n",
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "app/Dockerfile:3:6: error: `COPY --parents` is not supported\n  |\n3 |      --parents a /b\n  |      ^^^^^^^^^\n  hint: COPY each directory to its destination\n1 error"
        )
    );
}
