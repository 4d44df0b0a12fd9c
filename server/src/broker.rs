//! Start-up and shutdown: one pinned glommio executor (shard) per
//! configured core, joined by a channel mesh; SIGINT/SIGTERM start a
//! graceful shutdown (stop accepting, finish in-flight requests, flush,
//! mark every log clean).

use crate::config::ServerConfig;
use crate::shard::Shard;
use crate::topics::{self, TopicMeta};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Flags shared by the shards and the main thread (atomics, off the data path).
struct Phases {
    shutdown: Arc<AtomicBool>,
    ready: AtomicUsize,
    drained: AtomicUsize,
    closed: AtomicUsize,
    failed: AtomicBool,
}

/// Fails if another process already listens on `addr` (port 0 always
/// passes). Tested by connecting, not by binding: a plain bind would also
/// fail on the connections a just-stopped broker left behind on the port.
fn ensure_port_free(addr: std::net::SocketAddr, option: &str) -> Result<(), String> {
    if levee_coordinator::someone_listens(addr) {
        return Err(format!(
            "cannot listen on {addr}: another process listens there (another broker or coordinator?); use {option}"
        ));
    }
    Ok(())
}

/// glibc's malloc hands a freed large block straight back to the kernel
/// (a block above the mmap threshold is its own mapping; an arena's top
/// past the trim threshold is cut), so every fetch response's buffer (up
/// to the fetch size) was faulted in and zero-filled again: 12% of the
/// broker's CPU in a catch-up read (`benches/PERFORMANCE.md`). Fixed
/// thresholds keep such blocks in the arenas for the next response. What a
/// shard keeps is what its requests needed at once, which the request and
/// fetch size limits bound.
fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator settings; it is called
    // before any shard thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

pub fn run(cfg: ServerConfig) -> Result<(), String> {
    cfg.validate().map_err(|e| e.to_string())?;
    keep_freed_blocks();
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            cfg.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&cfg)?;
    check_identity(&cfg)?;
    // The shards listen with SO_REUSEPORT, which would also let them share
    // a port with another process that listens the same way (another
    // broker, a coordinator) and split its connections. Refuse instead.
    let listen = cfg.listen_addr().map_err(|e| e.to_string())?;
    ensure_port_free(listen, "--listen")?;
    if let Some(admin) = cfg.admin_addr().map_err(|e| e.to_string())? {
        ensure_port_free(admin, "--admin-listen")?;
    }
    if let Some(kafka) = cfg.kafka_addr().map_err(|e| e.to_string())? {
        ensure_port_free(kafka, "--kafka-listen (or `--kafka-listen none`)")?;
    }
    let peers = cfg.coordinator_peers().map_err(|e| e.to_string())?;
    // A cluster node takes its topics from the coordinators, not topics.toml.
    let topics = if peers.is_some() {
        BTreeMap::new()
    } else {
        topics::load(&cfg.data_dir)?
    };
    let view = peers.as_ref().map(|peers| {
        crate::cluster::ClusterView::new(
            u64::from(cfg.node_id),
            peers.iter().map(|p| (p.id, p.addr.to_string())).collect(),
            cfg.broker_lease_ms,
        )
    });
    let space = Arc::new(crate::space::SpaceState::new(
        &cfg.data_dir,
        cfg.space_reserve_bytes,
    ));
    match space.check().map(|_| space.reserve_held()) {
        Ok(true) => {}
        Ok(false) if cfg.space_reserve_bytes == 0 => {}
        Ok(false) => warn!(
            path = %space.reserve_path().display(),
            bytes = cfg.space_reserve_bytes,
            "not enough free space for the space reserve; it is created once there is"
        ),
        Err(e) => {
            warn!(path = %space.reserve_path().display(), error = %e, "cannot create the space reserve")
        }
    }
    let cpus = cfg.cpu_list().map_err(|e| e.to_string())?;
    let n = cpus.len();
    let phases = Arc::new(Phases {
        shutdown: Arc::new(AtomicBool::new(false)),
        ready: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    });
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, phases.shutdown.clone())
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    let cfg = Arc::new(cfg);
    let mesh = MeshBuilder::full(n, 1024);
    let mut handles = Vec::with_capacity(n);
    for cpu in &cpus {
        let (cfg, phases, topics, mesh, view, space) = (
            cfg.clone(),
            phases.clone(),
            topics.clone(),
            mesh.clone(),
            view.clone(),
            space.clone(),
        );
        let mut builder =
            LocalExecutorBuilder::new(Placement::Fixed(*cpu)).name(&format!("shard-cpu{cpu}"));
        if cfg.idle_spin_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(cfg.idle_spin_us));
        }
        let h = builder
            .spawn(move || async move {
                let r = run_shard(cfg, phases.clone(), topics, mesh, n, view, space).await;
                if let Err(e) = &r {
                    error!("{e}");
                    phases.failed.store(true, Ordering::SeqCst);
                    phases.shutdown.store(true, Ordering::SeqCst);
                }
                r
            })
            .map_err(|e| format!("cannot start the shard on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    // The coordinator shard and the membership heartbeats, on a cluster.
    let mut extra = Vec::new();
    if let (Some(peers), Some(view)) = (peers, view) {
        let me = u64::from(cfg.node_id);
        if peers.iter().any(|p| p.id == me) {
            extra.push(start_coordinator(&cfg, peers.clone(), &phases, &space)?);
        }
        let kafka = cfg
            .kafka_advertised()
            .map_err(|e| e.to_string())?
            .map(|(h, p)| format!("{h}:{p}"))
            .unwrap_or_default();
        let native = cfg.advertised().map_err(|e| e.to_string())?;
        extra.push(crate::cluster::start_membership(
            view,
            native,
            kafka,
            n,
            Duration::from_millis(cfg.heartbeat_interval_ms),
            phases.shutdown.clone(),
        )?);
    }
    let started = Instant::now();
    while phases.ready.load(Ordering::SeqCst) < n && !phases.failed.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !phases.failed.load(Ordering::SeqCst) {
        info!(
            listen = %cfg.listen,
            admin = %cfg.admin_listen,
            shards = n,
            data_dir = %cfg.data_dir.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "levee is ready"
        );
        eprintln!("levee listening on {} ({n} shards)", cfg.listen);
    }
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("a shard failed: {e}"));
            }
        }
    }
    for h in extra {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("the coordinator thread failed".to_string());
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            info!("levee stopped cleanly");
            Ok(())
        }
    }
}

/// Runs this node's coordinator (Raft member) on a dedicated executor until
/// shutdown.
fn start_coordinator(
    cfg: &Arc<ServerConfig>,
    peers: Vec<levee_coordinator::PeerSpec>,
    phases: &Arc<Phases>,
    space: &Arc<crate::space::SpaceState>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, String> {
    let mut cc =
        levee_coordinator::CoordinatorConfig::new(cfg.node_id.into(), peers, cfg.data_dir.clone());
    // Its log lives in the data directory: a full disk there is the
    // broker's, reported as such, and the space reserve is given up for it.
    let space = space.clone();
    cc.on_out_of_space = Some(levee_coordinator::OutOfSpaceHook(Arc::new(
        move |what: &str| {
            space.note_full(what);
            space.release_reserve().unwrap_or(0)
        },
    )));
    cc.broker_lease_ms = cfg.broker_lease_ms;
    cc.listen = cfg.cluster_listen_addr().map_err(|e| e.to_string())?;
    cc.propose_timeout_ms = cc.propose_timeout_ms.min(cfg.broker_lease_ms * 2);
    let phases = phases.clone();
    let h = LocalExecutorBuilder::new(Placement::Unbound)
        .name("coordinator")
        .spawn(move || async move {
            let handle = match levee_coordinator::Coordinator::start(cc).await {
                Ok(h) => h,
                Err(e) => {
                    let msg = format!("the coordinator failed to start: {e}");
                    error!("{msg}");
                    phases.failed.store(true, Ordering::SeqCst);
                    phases.shutdown.store(true, Ordering::SeqCst);
                    return Err(msg);
                }
            };
            info!(addr = %handle.local_addr(), "coordinator started");
            while !phases.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            handle.shutdown().await;
            Ok(())
        })
        .map_err(|e| format!("cannot start the coordinator executor: {e}"))?;
    // `LocalExecutorBuilder::spawn` returns glommio's join handle; wrap it so
    // the caller can join it like the shards.
    Ok(std::thread::spawn(move || {
        h.join()
            .map_err(|e| format!("the coordinator thread failed: {e}"))?
    }))
}

/// The node id and cluster a data directory belongs to, written at first
/// start (`<data_dir>/meta.properties`, as Kafka names it). Starting it as
/// another node, in another cluster, or switching between a single node and
/// a cluster is refused: it would serve data that is not this node's.
/// The on-disk format this build writes: 2 is Kafka's RecordBatch v2
/// (`engine/FORMAT.md`); data directories without it were written by
/// format 1.
const STORAGE_FORMAT: &str = "2";

fn check_identity(cfg: &ServerConfig) -> Result<(), String> {
    let cluster = match cfg.coordinator_peers().map_err(|e| e.to_string())? {
        Some(peers) => {
            let mut ids: Vec<String> = peers.iter().map(|p| p.id.to_string()).collect();
            ids.sort();
            format!("coordinators:{}", ids.join(","))
        }
        None => "single-node".to_string(),
    };
    let want = format!(
        "node_id={}\ncluster={cluster}\nstorage_format={STORAGE_FORMAT}\n",
        cfg.node_id
    );
    let path = cfg.data_dir.join("meta.properties");
    match std::fs::read_to_string(&path) {
        Ok(have) => {
            let field = |text: &str, key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
                    .unwrap_or_default()
            };
            let format = field(&have, "storage_format");
            if format != STORAGE_FORMAT {
                return Err(format!(
                    "data directory {} was written in Levee storage format {} (Levee's own record batches); this version stores Kafka's RecordBatch v2 (format {STORAGE_FORMAT}) and cannot read it. Start with a new --data-dir, or keep using the release that wrote it",
                    cfg.data_dir.display(),
                    if format.is_empty() { "1" } else { format.as_str() }
                ));
            }
            for key in ["node_id", "cluster"] {
                let (h, w) = (field(&have, key), field(&want, key));
                if h != w {
                    return Err(format!(
                        "data directory {} belongs to {key} `{h}`, but this node starts with {key} `{w}`; use that node's settings, or another --data-dir",
                        cfg.data_dir.display()
                    ));
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &want)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .and_then(|_| std::fs::File::open(&cfg.data_dir)?.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Refuses to start a second broker on the same data directory.
fn lock_data_dir(cfg: &ServerConfig) -> Result<std::fs::File, String> {
    let path = cfg.data_dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "data directory {} is in use by another levee process",
            cfg.data_dir.display()
        ));
    }
    Ok(f)
}

async fn wait_until(cond: impl Fn() -> bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= until {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// The protocol a listener serves.
#[derive(Clone, Copy)]
enum Front {
    Kafka,
}

/// Accepts connections on `listener` and serves each on this shard.
async fn accept(shard: std::rc::Rc<Shard>, listener: TcpListener, front: Front) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let s = shard.clone();
                match front {
                    Front::Kafka => {
                        glommio::spawn_local(crate::net::kafka::serve(s, stream)).detach()
                    }
                };
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn run_shard(
    cfg: Arc<ServerConfig>,
    phases: Arc<Phases>,
    topics: BTreeMap<String, TopicMeta>,
    mesh: MeshBuilder<crate::shard::MeshMsg, glommio::channels::channel_mesh::Full>,
    n: usize,
    view: Option<Arc<crate::cluster::ClusterView>>,
    space: Arc<crate::space::SpaceState>,
) -> Result<(), String> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "joining the shard mesh failed".to_string())?;
    let id = senders.peer_id();
    let shard = Shard::new(
        id,
        n,
        cfg.clone(),
        topics.clone(),
        Some(senders),
        view,
        space,
    );
    shard.serve_mesh(receivers);
    if shard.cluster.is_some() {
        glommio::spawn_local(shard.clone().run_metadata_watch()).detach();
        glommio::spawn_local(shard.clone().run_isr_manager()).detach();
    }
    for (name, meta) in &topics {
        shard
            .open_topic(name, meta)
            .await
            .map_err(|e| format!("shard {id}: opening topic `{name}` failed: {}", e.message))?;
    }
    let expiry_shard = shard.clone();
    let retention = Duration::from_millis(cfg.group_offsets_retention_ms);
    glommio::spawn_local(async move {
        while !expiry_shard.shutdown.is_set() {
            glommio::timer::sleep(Duration::from_secs(1).min(retention)).await;
            expiry_shard.groups.expire(retention).await;
        }
    })
    .detach();
    glommio::spawn_local(crate::handlers::txn::run_driver(shard.clone())).detach();
    let addr = cfg.listen_addr().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr}: {e} (is another broker running? use --listen)")
    })?;
    if id == 0 {
        glommio::spawn_local(shard.clone().run_space_monitor()).detach();
        if let Some(admin) = cfg.admin_addr().map_err(|e| e.to_string())? {
            let l = TcpListener::bind(admin).map_err(|e| {
                format!("cannot listen on admin address {admin}: {e} (use --admin-listen)")
            })?;
            glommio::spawn_local(crate::net::admin::serve(shard.clone(), l)).detach();
        }
    }
    let kafka = match cfg.kafka_addr().map_err(|e| e.to_string())? {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| {
            format!("cannot listen on Kafka address {addr}: {e} (use --kafka-listen, or `none`)")
        })?),
        None => None,
    };
    phases.ready.fetch_add(1, Ordering::SeqCst);
    let kafka_acceptor =
        kafka.map(|l| glommio::spawn_local(accept(shard.clone(), l, Front::Kafka)));
    let accept_shard = shard.clone();
    let acceptor = glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(crate::net::native::serve(accept_shard.clone(), stream))
                        .detach();
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    while !phases.shutdown.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // 1. Stop accepting; idle connections close, busy ones finish.
    drop(acceptor);
    drop(kafka_acceptor);
    shard.shutdown.trigger();
    let limit = Duration::from_millis(cfg.shutdown_timeout_ms);
    let s = shard.clone();
    if !wait_until(|| s.inflight.available() >= s.inflight_limit, limit).await {
        warn!(
            shard = id,
            "in-flight requests did not finish before the shutdown timeout"
        );
    }
    // 2. Every shard is drained (requests may cross shards), so close logs.
    phases.drained.fetch_add(1, Ordering::SeqCst);
    wait_until(|| phases.drained.load(Ordering::SeqCst) >= n, limit).await;
    shard.close_all().await;
    phases.closed.fetch_add(1, Ordering::SeqCst);
    wait_until(|| phases.closed.load(Ordering::SeqCst) >= n, limit).await;
    info!(shard = id, "shard stopped");
    Ok(())
}
