//! Which stages a target needs, in build order.

use crate::{GO, NODE, opts, parse_ok};

const MULTI: &str = "\
FROM alpine AS base
RUN echo base

FROM base AS deps
RUN echo deps

FROM golang AS tools

FROM alpine AS unused

FROM base AS build
COPY --from=deps /deps /deps
COPY --from=2 /go/bin/tool /bin/tool

FROM scratch AS final
COPY --from=build /out /out

FROM final AS debug
COPY --from=unused /bin/sh /bin/sh
";

#[test]
fn stage_order_follows_from_and_copy_from() {
    let d = parse_ok(MULTI, &opts(&[]));
    assert_eq!(d.stage_order(None), Ok(vec![0, 1, 2, 3, 4, 5, 6]));
    assert_eq!(d.stage_order(Some("final")), Ok(vec![0, 1, 2, 4, 5]));
    assert_eq!(d.stage_order(Some("BUILD")), Ok(vec![0, 1, 2, 4]));
    assert_eq!(d.stage_order(Some("tools")), Ok(vec![2]));
    assert_eq!(d.stage_order(Some("deps")), Ok(vec![0, 1]));
    assert_eq!(
        d.stage_order(Some("relase")),
        Err("target stage `relase` not found; the stages are `base`, `deps`, `tools`, `unused`, `build`, `final`, `debug`".into())
    );
    assert_eq!(d.stages[4].dependencies(), [0, 1, 2]);
}

#[test]
fn stage_order_of_the_fixtures() {
    let go = parse_ok(GO, &opts(&[]));
    assert_eq!(go.stage_order(None), Ok(vec![0, 1, 2]));
    assert_eq!(go.stage_order(Some("certs")), Ok(vec![1]));
    let node = parse_ok(NODE, &opts(&[]));
    assert_eq!(node.stage_order(None), Ok(vec![0, 1]));
    let one = parse_ok("FROM scratch\n", &opts(&[]));
    assert_eq!(
        one.stage_order(Some("x")),
        Err("target stage `x` not found: the Dockerfile names no stages".into())
    );
}

#[test]
fn copy_from_an_image_is_not_a_stage_dependency() {
    let d = parse_ok(
        "FROM alpine AS a\nFROM scratch\nCOPY --from=busybox:1 /bin/busybox /bin/\n",
        &opts(&[]),
    );
    assert_eq!(d.stage_order(None), Ok(vec![1]));
}
