//! The behaviour suite of quorate-state: one function, [`run_all`], that every backend runs
//! (in-memory under paused time, embedded Raft with 1 and 3 nodes, real etcd with 1 and 3
//! members). Waits are bounded and poll; nothing asserts a duration: ordering claims compare
//! monotonic instants recorded in this process.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use quorate_clock::{Clock, SharedClock, SystemClock};
use quorate_coord_api::{Consistency, Coord, LeaseId};
use quorate_state::{
    Admin, Counter, Election, Fenced, LockOptions, LostReason, Mutex, Semaphore, Session,
    SessionConfig, StateError, StateMap, StateMapConfig,
};
use quorate_types::FencingToken;

use super::{Faulty, KeepAlive};

/// The longest any single wait may take before the check fails.
const WAIT: Duration = Duration::from_secs(30);

/// One backend under test.
pub(crate) struct Env {
    /// One client per node.
    pub(crate) clients: Vec<Arc<dyn Coord>>,
    /// Prefix of every name the suite uses.
    pub(crate) prefix: String,
    /// TTL of every session.
    pub(crate) ttl: Duration,
    /// The one clock of every session and of the suite's timestamps.
    pub(crate) clock: SharedClock,
    next: std::sync::atomic::AtomicUsize,
}

impl Env {
    pub(crate) fn new(clients: Vec<Arc<dyn Coord>>, prefix: &str) -> Env {
        let caps = clients[0].capabilities();
        Env {
            ttl: caps.lease_ttl_min.max(Duration::from_secs(2)),
            clients,
            prefix: prefix.to_owned(),
            clock: SystemClock::shared(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// A client of the next node (round robin), wrapped so its keep-alives can be cut.
    fn faulty(&self) -> Arc<Faulty> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        Faulty::with_clock(Arc::clone(&self.clients[i]), Arc::clone(&self.clock))
    }

    fn config(&self, seed: u64) -> SessionConfig {
        let mut c = SessionConfig::new(self.ttl);
        c.seed = Some(seed);
        c
    }

    /// A session on its own fault-injectable client.
    async fn session(&self, seed: u64) -> (Session, Arc<Faulty>) {
        let f = self.faulty();
        let s = Session::start_with_clock(
            Arc::clone(&f) as Arc<dyn Coord>,
            self.config(seed),
            Arc::clone(&self.clock),
        )
        .await
        .expect("start session");
        (s, f)
    }

    /// Waits until `lease` has a key (its lock or campaign waiter joined the queue).
    async fn wait_queued(&self, lease: LeaseId) {
        within("waiter queued", async {
            loop {
                let info = self.clients[0].lease_time_to_live(lease).await.unwrap();
                if !info.keys.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(t) => t,
        Err(_) => panic!("{what}: did not happen within {WAIT:?}"),
    }
}

/// Runs every check in order; panics naming the first that fails.
pub(crate) async fn run_all(env: &Env) {
    mutual_exclusion_and_monotonic_tokens(env).await;
    fifo_waiters(env).await;
    lost_when_the_lease_is_revoked(env).await;
    lost_fires_before_another_holder_is_granted(env).await;
    waiter_fails_when_its_session_ends(env).await;
    timeouts_and_try_lock_leave_the_queue(env).await;
    leadership_cancelled_before_the_next_leader(env).await;
    state_map_bounded_typed_ops_and_gapless_watch(env).await;
    counter_adds_under_contention(env).await;
    semaphore_never_exceeds_its_permits(env).await;
    dead_permit_holder_frees_its_permit_after_its_lost(env).await;
    admin_lists_inspects_and_revokes(env).await;
    dropped_guard_releases_and_lock_delay_follows_an_involuntary_loss(env).await;
    election_observe_follows_proclaim_and_handover(env).await;
}

/// Several sessions on every node contend for one lock: never two inside at once, tokens
/// strictly increase in grant order, every holder's guarded write and fenced action succeed.
pub(crate) async fn mutual_exclusion_and_monotonic_tokens(env: &Env) {
    let name = env.name("mutex");
    let inside = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(StdMutex::new(Vec::<FencingToken>::new()));
    let fenced = Arc::new(Fenced::new(0u32));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (session, _f) = env.session(100 + w).await;
        let (name, inside, tokens, fenced) = (
            name.clone(),
            Arc::clone(&inside),
            Arc::clone(&tokens),
            Arc::clone(&fenced),
        );
        let data = env.name(&format!("mutex-data/{w}"));
        tasks.push(tokio::spawn(async move {
            let m = Mutex::new(session.clone(), name);
            for _ in 0..3 {
                let g = m.lock().await.expect("lock");
                assert!(
                    !inside.swap(true, Ordering::SeqCst),
                    "two holders inside the lock at once"
                );
                tokens.lock().unwrap().push(g.fencing_token());
                g.put_if_owner(data.clone(), b"x".to_vec())
                    .await
                    .expect("the holder's guarded write");
                fenced
                    .apply(g.fencing_token(), |n| *n += 1)
                    .expect("the holder's fenced action");
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                g.unlock().await.expect("unlock");
            }
            session.close().await;
        }));
    }
    for t in tasks {
        within("contending holders finish", t).await.expect("task");
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 12);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing in grant order: {tokens:?}"
    );
    assert_eq!(fenced.apply(FencingToken(u64::MAX), |n| *n).unwrap(), 12);
}

/// Waiters are served in the order they joined the queue.
pub(crate) async fn fifo_waiters(env: &Env) {
    let name = env.name("fifo");
    let (holder, _f) = env.session(200).await;
    let g = Mutex::new(holder.clone(), &name).lock().await.unwrap();
    let mut waiters = Vec::new();
    for w in 0..3u64 {
        let (s, _f) = env.session(201 + w).await;
        let m = Mutex::new(s.clone(), &name);
        let task = tokio::spawn(async move { m.lock().await });
        env.wait_queued(s.lease()).await;
        waiters.push((s, task));
    }
    let mut prev = g.fencing_token();
    g.unlock().await.unwrap();
    let mut done = Vec::new();
    for (i, (s, task)) in waiters.into_iter().enumerate() {
        let g = within("next waiter granted", task).await.unwrap().unwrap();
        assert_eq!(
            g.grant().lease,
            s.lease(),
            "waiter {i} was not served in its turn"
        );
        assert!(g.fencing_token() > prev);
        prev = g.fencing_token();
        g.unlock().await.unwrap();
        done.push(s);
    }
    for s in done {
        s.close().await;
    }
    holder.close().await;
}

/// Revoking a holder's lease from outside makes its `lost()` fire with `Revoked`; its guarded
/// write is refused (locally, or by the backend if it has not noticed yet).
pub(crate) async fn lost_when_the_lease_is_revoked(env: &Env) {
    let name = env.name("revoked");
    let (s, _f) = env.session(300).await;
    let g = Mutex::new(s.clone(), &name).lock().await.unwrap();
    env.clients[0].lease_revoke(s.lease()).await.unwrap();
    let write = g
        .put_if_owner(env.name("revoked-data"), b"stale".to_vec())
        .await;
    assert!(
        matches!(
            write,
            Err(StateError::NotHolder { .. } | StateError::SessionLost { .. })
        ),
        "a revoked holder's write was not refused: {write:?}"
    );
    let reason = within("lost after revoke", g.lost()).await;
    assert_eq!(reason, LostReason::Revoked);
    assert!(!g.is_held());
    let write = g
        .put_if_owner(env.name("revoked-data"), b"stale".to_vec())
        .await;
    assert!(
        matches!(write, Err(StateError::SessionLost { .. })),
        "{write:?}"
    );
}

/// The holder's keep-alives are cut (a partition between it and the cluster). Its `lost()`
/// fires, by its own clock, before the waiting session is granted the lock; afterwards its
/// guarded write is refused and its fenced action rejected.
pub(crate) async fn lost_fires_before_another_holder_is_granted(env: &Env) {
    let name = env.name("handover");
    let fenced = Fenced::new(Vec::<&str>::new());
    let (a, fa) = env.session(400).await;
    let ga = Mutex::new(a.clone(), &name).lock().await.unwrap();
    fenced.apply(ga.fencing_token(), |v| v.push("a")).unwrap();
    let (b, _fb) = env.session(401).await;
    let mb = Mutex::new(b.clone(), &name);
    let clock = Arc::clone(&env.clock);
    let waiter = tokio::spawn(async move {
        let g = mb.lock().await;
        (g, clock.now())
    });
    env.wait_queued(b.lease()).await;
    fa.set_keep_alive(KeepAlive::Hang);
    let reason = within("holder a lost", ga.lost()).await;
    assert!(
        matches!(reason, LostReason::DeadlinePassed { .. }),
        "{reason:?}"
    );
    let (gb, granted_at) = within("b granted", waiter).await.unwrap();
    let gb = gb.unwrap();
    let lost_at = a.lost_at().expect("lost_at recorded");
    assert!(
        lost_at < granted_at,
        "holder a's lost() ({lost_at:?}) did not fire before b's grant ({granted_at:?})"
    );
    assert!(gb.fencing_token() > ga.fencing_token());
    fenced.apply(gb.fencing_token(), |v| v.push("b")).unwrap();
    let stale = fenced.apply(ga.fencing_token(), |v| v.push("a again"));
    assert!(stale.is_err(), "a stale token was admitted");
    let write = ga
        .put_if_owner(env.name("handover-data"), b"a".to_vec())
        .await;
    assert!(
        matches!(write, Err(StateError::SessionLost { .. })),
        "{write:?}"
    );
    assert_eq!(fenced.into_inner(), vec!["a", "b"]);
    assert!(a.stats().renewals_missed >= 1);
    gb.unlock().await.unwrap();
    b.close().await;
}

/// A waiter whose own session ends (keep-alives cut) fails at once with `SessionLost`, while the
/// holder keeps the lock.
pub(crate) async fn waiter_fails_when_its_session_ends(env: &Env) {
    let name = env.name("waiter-dies");
    let (h, _fh) = env.session(500).await;
    let gh = Mutex::new(h.clone(), &name).lock().await.unwrap();
    let (w, fw) = env.session(501).await;
    let mw = Mutex::new(w.clone(), &name);
    let waiter = tokio::spawn(async move { mw.lock().await });
    env.wait_queued(w.lease()).await;
    fw.set_keep_alive(KeepAlive::Hang);
    let r = within("waiter fails", waiter).await.unwrap();
    assert!(matches!(r, Err(StateError::SessionLost { .. })), "{r:?}");
    let lost_at = w.lost_at().expect("lost_at");
    assert!(lost_at <= env.clock.now());
    let holder = env.clients[0]
        .lock_holder(&name, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(holder.map(|g| g.lease), Some(h.lease()));
    assert!(gh.is_held());
    gh.unlock().await.unwrap();
    h.close().await;
}

/// `lock_timeout` and `try_lock` give up and leave the queue: after the holder unlocks, the
/// lock is free, not held by the one that gave up.
pub(crate) async fn timeouts_and_try_lock_leave_the_queue(env: &Env) {
    let name = env.name("timeout");
    let (h, _fh) = env.session(600).await;
    let gh = Mutex::new(h.clone(), &name).lock().await.unwrap();
    let (w, _fw) = env.session(601).await;
    let mw = Mutex::with_options(w.clone(), &name, LockOptions::default());
    let r = mw.lock_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(StateError::Timeout { .. })), "{r:?}");
    let r = mw.try_lock().await;
    assert!(matches!(r, Err(StateError::WouldBlock { .. })), "{r:?}");
    gh.unlock().await.unwrap();
    let holder = env.clients[0]
        .lock_holder(&name, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        holder, None,
        "the session that gave up was granted the lock"
    );
    let g = mw.try_lock().await.expect("try_lock on a free lock");
    g.unlock().await.unwrap();
    w.close().await;
    h.close().await;
}

/// A leader's work under `run_while_leader` is cancelled when its keep-alives are cut, before
/// the next candidate leads.
pub(crate) async fn leadership_cancelled_before_the_next_leader(env: &Env) {
    let name = env.name("election");
    let (a, fa) = env.session(700).await;
    let la = Election::new(a.clone(), &name)
        .campaign(b"a".to_vec())
        .await
        .unwrap();
    assert!(la.is_leader());
    let (b, _fb) = env.session(701).await;
    let eb = Election::new(b.clone(), &name);
    let clock = Arc::clone(&env.clock);
    let candidate = tokio::spawn(async move {
        let l = eb.campaign(b"b".to_vec()).await;
        (l, clock.now())
    });
    env.wait_queued(b.lease()).await;
    let clock = Arc::clone(&env.clock);
    let work = tokio::spawn(async move {
        let r = la.run_while_leader(std::future::pending::<()>()).await;
        (r, clock.now())
    });
    fa.set_keep_alive(KeepAlive::Hang);
    let (r, cancelled_at) = within("a's work cancelled", work).await.unwrap();
    assert!(matches!(r, Err(StateError::SessionLost { .. })), "{r:?}");
    let (lb, led_at) = within("b leads", candidate).await.unwrap();
    let lb = lb.unwrap();
    assert!(
        cancelled_at < led_at,
        "a's work was cancelled at {cancelled_at:?}, after b led at {led_at:?}"
    );
    assert!(lb.token() > FencingToken(0));
    let e = Election::new(b.clone(), &name);
    assert!(e.is_leader().await.unwrap());
    lb.resign().await.unwrap();
    b.close().await;
}

/// A map bounded to 3 entries: inserts beyond fail with `Full` (overwrites do not count),
/// compare-and-set honours revisions, deletes free room; its watch, whose connection breaks
/// after every 2 events, still delivers every change once, in order.
pub(crate) async fn state_map_bounded_typed_ops_and_gapless_watch(env: &Env) {
    let f = env.faulty();
    f.cut_watches_after(2);
    let cfg = StateMapConfig::new(std::num::NonZeroU64::new(3).unwrap());
    let map: StateMap<String, Vec<u32>> =
        StateMap::new(Arc::clone(&f) as Arc<dyn Coord>, env.name("map/"), cfg).unwrap();
    let mut changes = map.watch(None).await.unwrap();
    let k = |s: &str| s.to_owned();
    map.put(&k("a"), &vec![1]).await.unwrap();
    map.put(&k("b"), &vec![2]).await.unwrap();
    map.put(&k("c"), &vec![3]).await.unwrap();
    let full = map.put(&k("d"), &vec![4]).await;
    assert!(
        matches!(full, Err(StateError::Full { max: 3, .. })),
        "{full:?}"
    );
    let rev = map.put(&k("a"), &vec![1, 1]).await.unwrap();
    assert_eq!(map.len().await.unwrap(), 3);
    let stale = map
        .compare_and_set(&k("a"), Some(quorate_coord_api::Revision(1)), &vec![9])
        .await
        .unwrap();
    assert_eq!(stale, None, "a compare-and-set with a stale revision won");
    map.compare_and_set(&k("a"), Some(rev), &vec![1, 2])
        .await
        .unwrap()
        .expect("compare-and-set with the current revision");
    assert_eq!(
        map.compare_and_set(&k("b"), None, &vec![0]).await.unwrap(),
        None
    );
    assert!(map.delete(&k("b")).await.unwrap());
    assert!(!map.delete(&k("b")).await.unwrap());
    map.put(&k("d"), &vec![4]).await.unwrap();
    assert_eq!(map.len().await.unwrap(), 3);
    let got = map.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(got.value, vec![1, 2]);
    let keys: Vec<String> = map
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 3);
    let expected: Vec<(&str, Option<Vec<u32>>)> = vec![
        ("a", Some(vec![1])),
        ("b", Some(vec![2])),
        ("c", Some(vec![3])),
        ("a", Some(vec![1, 1])),
        ("a", Some(vec![1, 2])),
        ("b", None),
        ("d", Some(vec![4])),
    ];
    let mut last = quorate_coord_api::Revision(0);
    for (key, value) in expected {
        let c = within("a watched change", changes.next())
            .await
            .expect("the watch goes on")
            .expect("no watch error");
        assert_eq!((c.key.as_str(), c.value.clone()), (key, value), "{c:?}");
        assert!(c.revision > last);
        last = c.revision;
    }
}

/// Concurrent adds through a compare-and-set loop lose nothing.
pub(crate) async fn counter_adds_under_contention(env: &Env) {
    let key = env.name("counter");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = Counter::new(
            env.faulty() as Arc<dyn Coord>,
            key.clone(),
            std::num::NonZeroU32::new(200).unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                c.add(1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("adders finish", t).await.unwrap();
    }
    let c = Counter::new(
        env.faulty() as Arc<dyn Coord>,
        key,
        std::num::NonZeroU32::MIN,
    );
    assert_eq!(c.get().await.unwrap(), 20);
    assert_eq!(c.add(-25).await.unwrap(), -5);
}

/// Five clients share a 2-permit semaphore: never more than 2 inside, every permit has its own
/// lease, and grant tokens are distinct; a full semaphore refuses `try_acquire`.
pub(crate) async fn semaphore_never_exceeds_its_permits(env: &Env) {
    let name = format!("{}sem", env.prefix.replace('/', "-"));
    let two = std::num::NonZeroU32::new(2).unwrap();
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tokens = Arc::new(StdMutex::new(Vec::<FencingToken>::new()));
    let mut tasks = Vec::new();
    for w in 0..5u64 {
        let sem = Semaphore::new(
            env.faulty() as Arc<dyn Coord>,
            &name,
            two,
            env.config(800 + w),
        )
        .unwrap();
        let (inside, tokens) = (Arc::clone(&inside), Arc::clone(&tokens));
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                let p = sem.acquire().await.expect("acquire");
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n <= 2, "{n} holders of a 2-permit semaphore");
                assert!(p.slot() < 2);
                tokens.lock().unwrap().push(p.token());
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                p.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        within("semaphore users finish", t).await.unwrap();
    }
    let mut tokens = tokens.lock().unwrap().clone();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 10, "permit tokens repeat");

    let sem = Semaphore::new(env.faulty() as Arc<dyn Coord>, &name, two, env.config(810)).unwrap();
    let p1 = sem.acquire().await.unwrap();
    let p2 = sem.acquire().await.unwrap();
    assert_ne!(p1.session().lease(), p2.session().lease());
    let r = sem.try_acquire().await;
    assert!(matches!(r, Err(StateError::WouldBlock { .. })), "{r:?}");
    p1.release().await.unwrap();
    p2.release().await.unwrap();
}

/// A permit holder whose keep-alives are cut: its `lost()` fires before a waiter gets the
/// permit, and the waiter gets it without anyone releasing it.
pub(crate) async fn dead_permit_holder_frees_its_permit_after_its_lost(env: &Env) {
    let name = format!("{}sem-dead", env.prefix.replace('/', "-"));
    let one = std::num::NonZeroU32::MIN;
    let fa = env.faulty();
    let sa = Semaphore::new(
        Arc::clone(&fa) as Arc<dyn Coord>,
        &name,
        one,
        env.config(820),
    )
    .unwrap()
    .with_clock(Arc::clone(&env.clock));
    let pa = sa.acquire().await.unwrap();
    let sb = Semaphore::new(env.faulty() as Arc<dyn Coord>, &name, one, env.config(821))
        .unwrap()
        .with_clock(Arc::clone(&env.clock));
    let clock = Arc::clone(&env.clock);
    let waiter = tokio::spawn(async move {
        let p = sb.acquire().await;
        (p, clock.now())
    });
    fa.set_keep_alive(KeepAlive::Hang);
    let reason = within("permit holder lost", pa.lost()).await;
    assert!(
        matches!(reason, LostReason::DeadlinePassed { .. }),
        "{reason:?}"
    );
    let (pb, granted_at) = within("waiter gets the permit", waiter).await.unwrap();
    let pb = pb.unwrap();
    let lost_at = pa.session().lost_at().unwrap();
    assert!(
        lost_at < granted_at,
        "lost {lost_at:?} not before grant {granted_at:?}"
    );
    assert!(pb.token() > pa.token());
    pb.release().await.unwrap();
}

/// A labelled session is listed with its lock key; the lock's holder is inspected; revoking the
/// holder makes its `lost()` fire (`Revoked`) and frees the lock.
pub(crate) async fn admin_lists_inspects_and_revokes(env: &Env) {
    let name = env.name("admin-lock");
    let mut cfg = env.config(900);
    cfg.label = Some(format!("{}worker", env.prefix));
    let s = Session::start(env.faulty() as Arc<dyn Coord>, cfg)
        .await
        .unwrap();
    let g = Mutex::new(s.clone(), &name).lock().await.unwrap();
    let admin = Admin::new(Arc::clone(&env.clients[0]));
    let listed = admin.sessions(1000).await.unwrap();
    let me = listed
        .iter()
        .find(|i| i.lease == s.lease())
        .expect("the labelled session is listed");
    assert_eq!(
        me.label.as_deref(),
        Some(format!("{}worker", env.prefix).as_str())
    );
    assert!(me.keys.contains(&g.grant().key), "{me:?}");
    let info = admin.lock(&name).await.unwrap().expect("held");
    assert_eq!(info.holder.lease, s.lease());
    assert_eq!(info.session.map(|i| i.lease), Some(s.lease()));
    let revoked = admin.revoke_lock_holder(&name).await.unwrap();
    assert_eq!(revoked.map(|r| r.lease), Some(s.lease()));
    assert_eq!(
        within("holder sees the revoke", g.lost()).await,
        LostReason::Revoked
    );
    assert!(admin.lock(&name).await.unwrap().is_none());
    assert!(admin.session(s.lease()).await.unwrap().is_none());
    assert!(
        !admin
            .sessions(1000)
            .await
            .unwrap()
            .iter()
            .any(|i| i.lease == s.lease()),
        "a revoked session is still listed"
    );
}

/// A guard dropped without `unlock` is released by its session's keeper (the next waiter gets
/// the lock). With a lock-delay, a waiter granted after the holder's session was revoked
/// returns no earlier than the delay after the grant was possible.
pub(crate) async fn dropped_guard_releases_and_lock_delay_follows_an_involuntary_loss(env: &Env) {
    let name = env.name("drop-delay");
    let (a, _fa) = env.session(1000).await;
    let ga = Mutex::new(a.clone(), &name).lock().await.unwrap();
    let (b, _fb) = env.session(1001).await;
    let mb = Mutex::new(b.clone(), &name);
    let waiter = tokio::spawn(async move { mb.lock().await });
    env.wait_queued(b.lease()).await;
    drop(ga);
    let gb = within("the waiter after a dropped guard", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gb.grant().lease, b.lease());

    let delay = Duration::from_millis(700);
    let (c, _fc) = env.session(1002).await;
    let options = LockOptions {
        lock_delay: delay,
        ..LockOptions::default()
    };
    let mc = Mutex::with_options(c.clone(), &name, options);
    let clock = Arc::clone(&env.clock);
    let waiter = tokio::spawn(async move {
        let g = mc.lock().await;
        (g, clock.now())
    });
    env.wait_queued(c.lease()).await;
    let revoked_at = env.clock.now();
    env.clients[0].lease_revoke(b.lease()).await.unwrap();
    let (gc, returned_at) = within("the delayed waiter", waiter).await.unwrap();
    let gc = gc.unwrap();
    assert!(gc.fencing_token() > gb.fencing_token());
    assert!(
        returned_at >= revoked_at + delay,
        "the lock-delay was not applied: returned {:?} after the revoke",
        returned_at.saturating_sub(revoked_at)
    );
    drop(gb);
    gc.unlock().await.unwrap();
    a.close().await;
    c.close().await;
}

/// `observe` shows the leader, its proclaimed value, and the next leader after a resign.
pub(crate) async fn election_observe_follows_proclaim_and_handover(env: &Env) {
    let name = env.name("observed");
    let (a, _fa) = env.session(1100).await;
    let ea = Election::new(a.clone(), &name);
    let la = ea.campaign(b"a1".to_vec()).await.unwrap();
    let mut seen = ea.observe().await.unwrap();
    let first = within("current leader", seen.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.map(|l| (l.key.lease, l.value)),
        Some((a.lease(), b"a1".to_vec()))
    );
    la.proclaim(b"a2".to_vec()).await.unwrap();
    let (b, _fb) = env.session(1101).await;
    let eb = Election::new(b.clone(), &name);
    let candidate = tokio::spawn(async move { eb.campaign(b"b1".to_vec()).await });
    env.wait_queued(b.lease()).await;
    let mut saw_a2 = false;
    within("proclaimed value observed", async {
        while !saw_a2 {
            let l = seen.next().await.unwrap().unwrap();
            saw_a2 = l.is_some_and(|l| l.key.lease == a.lease() && l.value == b"a2");
        }
    })
    .await;
    la.resign().await.unwrap();
    let lb = within("b leads", candidate).await.unwrap().unwrap();
    within("next leader observed", async {
        loop {
            let l = seen.next().await.unwrap().unwrap();
            if l.is_some_and(|l| l.key.lease == b.lease() && l.value == b"b1") {
                return;
            }
        }
    })
    .await;
    assert!(lb.token() > FencingToken(0));
    assert!(!ea.is_leader().await.unwrap());
    lb.resign().await.unwrap();
    a.close().await;
    b.close().await;
}
