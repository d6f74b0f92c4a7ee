//! Issue 18, point 4: an app talking to real PostgreSQL by name. Stock Debian PostgreSQL 15 runs
//! as service `db` (as `postgres.rs` builds it); service `app` (Debian's busybox httpd and
//! `psql` from the loopback apt repository) writes a row through `db:5432` for every request and
//! answers how many rows there are. The app rolls out under load: no request fails and no row
//! it reported written is missing; the database is reached only through its name.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Load, Server, body_now, free_port, ok};
use crate::postgres::{instance, postgres_context, postgres_spec, project, psql};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The app: every request inserts a row (tagged with the app's release) through `db:5432` and
/// answers the number of rows; a failed query answers 500, so the load sees it.
const APP_CGI: &str = r#"#!/bin/sh
out=$(psql -h db -p 5432 -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
  -c "insert into hits (release) values ('$RELEASE')" \
  -c "select 'rows ' || count(*) from hits" 2>&1)
if [ $? -eq 0 ]; then status="200 OK"; else status="500 Internal Server Error"; fi
printf 'Status: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s\n' "$status" $((${#out} + 1)) "$out"
"#;

fn app_dockerfile() -> String {
    r#"FROM debian:12
ARG DEBIAN_FRONTEND=noninteractive
ARG APT_REPO
RUN echo "deb [trusted=yes] ${APT_REPO} ./" > /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends busybox postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/*
COPY index.cgi /srv/www/cgi-bin/index.cgi
EXPOSE 8080
CMD ["busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/www"]
"#
    .to_string()
}

fn write_spec(dir: &Path, archive: &Path, repo: &str, port: u16, release: &str) {
    let db = postgres_spec(archive, repo, "1").replace("service \"postgres\"", "service \"db\"");
    fs::write(
        dir.join("recast.hcl"),
        format!(
            r#"{db}
image "app" {{
  dockerfile = "app/Dockerfile"
  args       = {{ APT_REPO = "{repo}" }}
}}

service "app" {{
  image     = image.app
  instances = 2
  port      = 8080
  env       = {{ RELEASE = "{release}" }}
  health {{
    tcp      = true
    interval = "300ms"
  }}
}}

route "app" {{
  listen  = "127.0.0.1:{port}"
  service = service.app
}}
"#
        ),
    )
    .expect("spec");
}

#[test]
fn an_app_reaches_postgres_as_db_5432_and_rolls_out_under_load_without_a_failed_request() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("appdb")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    postgres_context(dir);
    project(dir, "app", &app_dockerfile());
    let cgi = dir.join("app/index.cgi");
    fs::write(&cgi, APP_CGI).expect("cgi");
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755)).expect("chmod");

    write_spec(dir, &archive, &repo.url, port, "1");
    ok(&server.rc(dir, &["apply", "--yes"]));
    let db = instance(&server, dir, "db");
    psql(
        &server,
        &db,
        "create table hits (id bigserial primary key, release text not null)",
    );
    assert_eq!(
        body_now(port).trim(),
        "rows 1",
        "the app writes and reads through db:5432"
    );

    let load = Load::start(port);
    load.flowing(20);
    write_spec(dir, &archive, &repo.url, port, "2");
    ok(&server.rc(dir, &["apply", "--yes"]));
    load.flowing(20);
    let (served, failures, _) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Every answered request wrote its row (plus the first one), from both releases.
    let count: u64 = psql(&server, &db, "select count(*) from hits")
        .parse()
        .expect("count");
    assert!(
        count > served,
        "{count} rows for {served} answered requests"
    );
    let releases = psql(
        &server,
        &db,
        "select string_agg(distinct release, ',' order by release) from hits",
    );
    assert_eq!(releases, "1,2");
}
