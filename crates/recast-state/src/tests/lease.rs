//! Hosts, leases and fencing tokens (`lease.rs`).

use super::*;

on_both!(
    a_lease_is_taken_once_and_its_token_grows_with_each_holder,
    a_write_without_the_current_lease_is_refused_naming_project_and_holder,
    a_host_name_in_use_is_refused_until_it_stops_renewing,
    renewal_reports_a_lost_lease_and_a_move_request,
    a_new_lease_taken_by_two_hosts_at_once_goes_to_one,
    a_renamed_host_keeps_the_leases_of_its_place,
);

fn host(name: &str, instance: &str) -> Host {
    Host {
        name: name.into(),
        instance: instance.into(),
        api: "127.0.0.1:1".into(),
        standby_for: vec!["*".into()],
        started_ms: 0,
        seen_ms: 0,
        lease_ms: 10_000,
    }
}

fn a_lease_is_taken_once_and_its_token_grows_with_each_holder(db: &TestDb) {
    let s = db.open();
    let a = s
        .take_lease("p", "a", 10_000, Take::IfFree)
        .expect("db")
        .expect("free");
    assert_eq!((a.host.as_str(), a.token), ("a", 1));
    // Held and not expired: b cannot take it, and learns who holds it.
    let held = s
        .take_lease("p", "b", 10_000, Take::IfFree)
        .expect("db")
        .expect_err("held");
    assert_eq!(held.host, "a");
    // IfMine never takes a lease of another host, nor a new one.
    assert!(
        s.take_lease("p", "b", 10_000, Take::IfMine)
            .expect("db")
            .is_err()
    );
    assert!(
        s.take_lease("q", "b", 10_000, Take::IfMine)
            .expect("db")
            .is_err()
    );
    // a starting again takes its own lease with a new token.
    let a2 = s
        .take_lease("p", "a", 10_000, Take::IfMine)
        .expect("db")
        .expect("mine");
    assert_eq!(a2.token, 2);
    // Expired: b takes it.
    let a3 = s
        .take_lease("p", "a", -1, Take::IfMine)
        .expect("db")
        .expect("mine");
    assert_eq!(a3.token, 3);
    let b = s
        .take_lease("p", "b", 10_000, Take::IfFree)
        .expect("db")
        .expect("expired");
    assert_eq!((b.host.as_str(), b.token), ("b", 4));
    assert_eq!(db.open().lease("p").expect("db"), Some(b));
}

fn a_write_without_the_current_lease_is_refused_naming_project_and_holder(db: &TestDb) {
    let (old, new) = (db.open(), db.open());
    old.act_as("a");
    new.act_as("b");
    // Not held at all.
    let e = old.event("p", "web", "k", "m").expect_err("no lease");
    assert!(
        e.to_string().contains("project p") && e.to_string().contains("host a"),
        "{e}"
    );
    let l = old
        .take_lease("p", "a", -1, Take::IfFree)
        .expect("db")
        .expect("free");
    old.hold(&l);
    old.event("p", "web", "k", "written by a")
        .expect("a holds it");
    let r = old.new_release(&release("web", "h1")).expect("a holds it");
    old.add_instance("i1", "p", "web", r.number)
        .expect("a holds it");
    // b takes the expired lease: every later write of a is refused, b's pass.
    let l = new
        .take_lease("p", "b", 10_000, Take::IfFree)
        .expect("db")
        .expect("expired");
    new.hold(&l);
    let e = old
        .set_current("p", "web", Some(r.number))
        .expect_err("fenced");
    let msg = e.to_string();
    assert!(msg.contains("project p") && msg.contains("to b"), "{msg}");
    assert!(matches!(e, Error::Fenced { .. }));
    // Writes by row id are fenced by the row's project too.
    assert!(matches!(
        old.remove_instance("i1"),
        Err(Error::Fenced { .. })
    ));
    new.set_current("p", "web", Some(r.number))
        .expect("b holds it");
    new.remove_instance("i1").expect("b holds it");
    // Other projects are not affected by p's lease.
    let q = old
        .take_lease("q", "a", 10_000, Take::IfFree)
        .expect("db")
        .expect("free");
    old.hold(&q);
    old.event("q", "web", "k", "m").expect("a holds q");
    let kinds: Vec<String> = new
        .events(0, 100)
        .expect("db")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(kinds, ["written by a", "m"]);
    // Without act_as (tools, tests) nothing is checked.
    db.open().event("p", "web", "k", "m").expect("unfenced");
}

fn a_host_name_in_use_is_refused_until_it_stops_renewing(db: &TestDb) {
    let s = db.open();
    s.register_host(&host("a", "one"))
        .expect("db")
        .expect("new");
    // The same instance registers again (a retry): fine.
    s.register_host(&host("a", "one"))
        .expect("db")
        .expect("same instance");
    let other = s
        .register_host(&host("a", "two"))
        .expect("db")
        .expect_err("in use");
    assert_eq!(other.instance, "one");
    // A clean stop frees the name at once.
    s.host_stopped("a", "one").expect("db");
    let now = s
        .register_host(&host("a", "two"))
        .expect("db")
        .expect("free");
    assert_eq!(now.instance, "two");
    assert!(now.seen_ms > 0 && now.stands_by_for("anything"));
    // A name last renewed longer ago than its lease time is free too.
    let mut quick = host("a", "four");
    quick.lease_ms = 0;
    s.host_stopped("a", "two").expect("db");
    s.register_host(&quick).expect("db").expect("free");
    assert!(s.register_host(&host("a", "five")).expect("db").is_ok());
    assert_eq!(s.hosts().expect("db").len(), 1);
    // A server starting again in the same place (data directory) follows the one before at
    // once, even killed a moment ago; another place waits.
    s.register_host(&host("b", "dir1:run1"))
        .expect("db")
        .expect("new");
    s.register_host(&host("b", "dir1:run2"))
        .expect("db")
        .expect("same place");
    assert!(
        s.register_host(&host("b", "dir2:run1"))
            .expect("db")
            .is_err()
    );
}

fn renewal_reports_a_lost_lease_and_a_move_request(db: &TestDb) {
    let s = db.open();
    s.register_host(&host("a", "one"))
        .expect("db")
        .expect("new");
    s.act_as("a");
    let p = s
        .take_lease("p", "a", 10_000, Take::IfFree)
        .expect("db")
        .expect("free");
    let q = s
        .take_lease("q", "a", 10_000, Take::IfFree)
        .expect("db")
        .expect("free");
    s.hold(&p);
    s.hold(&q);
    s.request_move("q", "b").expect("db");
    let before = s.lease("p").expect("db").expect("row").expires_ms;
    let rows = s
        .renew("a", "one", &s.held(), 20_000)
        .expect("db")
        .expect("registered");
    assert_eq!(rows.len(), 2);
    assert!(rows[0].expires_ms > before, "renewed: {rows:?}");
    assert_eq!(rows[1].move_to.as_deref(), Some("b"));
    // The holder hands q over: the lease names b with a new token, and a holds q no more.
    s.hand_over("q", "b", 10_000).expect("holder");
    assert_eq!(s.held(), [("p".to_string(), p.token)]);
    let moved = s.lease("q").expect("db").expect("row");
    assert_eq!(
        (moved.host.as_str(), moved.token, moved.move_to),
        ("b", q.token + 1, None)
    );
    // b takes what names it; its own token again.
    let b = s
        .take_lease("q", "b", 10_000, Take::IfMine)
        .expect("db")
        .expect("named");
    assert_eq!(b.token, q.token + 2);
    // Another instance took the name: renewal says so.
    s.host_stopped("a", "one").expect("db");
    s.register_host(&host("a", "two"))
        .expect("db")
        .expect("a free name");
    assert_eq!(s.renew("a", "one", &s.held(), 10_000).expect("db"), None);
}

fn a_new_lease_taken_by_two_hosts_at_once_goes_to_one(db: &TestDb) {
    let (x, y) = (db.open(), db.open());
    let threads: Vec<_> = [(x, "a"), (y, "b")]
        .into_iter()
        .map(|(s, h)| {
            std::thread::spawn(move || {
                (0..20)
                    .filter(|i| {
                        s.take_lease(&format!("p{i}"), h, 10_000, Take::IfFree)
                            .expect("db")
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let won: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(won, 20, "each new lease went to exactly one host");
}

fn a_renamed_host_keeps_the_leases_of_its_place(db: &TestDb) {
    let s = db.open();
    s.register_host(&host("old", "dir1:run1"))
        .expect("db")
        .expect("new");
    let l = s
        .take_lease("p", "old", 10_000, Take::IfFree)
        .expect("db")
        .expect("free");
    assert_eq!(
        s.rename_host("dir2", "new").expect("db"),
        Vec::<String>::new()
    );
    assert_eq!(s.rename_host("dir1", "new").expect("db"), ["old"]);
    let moved = s.lease("p").expect("db").expect("row");
    assert_eq!((moved.host.as_str(), moved.token), ("new", l.token + 1));
    assert!(s.hosts().expect("db").is_empty());
}
