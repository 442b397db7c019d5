//! The debug endpoint (cargo feature `debug`): what one node believes, for people and
//! for Prometheus. Read-only, and served only when [`NodeBuilder::debug_addr`] is set.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | a dashboard (one HTML page, plain JS) that updates live |
//! | `GET /v1/node` | [`NodeView`] |
//! | `GET /v1/members` | [`MemberView`] list |
//! | `GET /v1/owners` | [`OwnersView`] list, one per resource |
//! | `GET /v1/events` | server-sent events, each an [`EventView`] |
//! | `GET /metrics` | Prometheus text exposition |
//!
//! The server runs on its own thread; every answer is a snapshot taken on the protocol
//! thread, so it never reads half-updated state.
//!
//! [`NodeBuilder::debug_addr`]: crate::NodeBuilder::debug_addr

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::driver::Command;
use crate::error::Error;
use crate::proto::{Core, Event};

/// `GET /v1/node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start number.
    pub boot: u64,
    /// `joining`, `active`, `alone`, `leaving`, `left` or `superseded`.
    pub state: String,
    /// Hex digest of the live members and their records' readiness, interests and held
    /// lists: equal on nodes with equal views.
    pub view_digest: String,
    /// `available`.
    pub safety: String,
    /// Live members it sees, itself excluded.
    pub members: usize,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
}

/// One entry of `GET /v1/members` (the node itself comes first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's name, once its record is known.
    pub name: Option<String>,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start number.
    pub boot: u64,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    /// Its SWIM incarnation.
    pub incarnation: u16,
    /// The view digest it last reported to this node (hex), if any.
    pub view_digest: Option<String>,
    /// How long ago it reported it, in milliseconds.
    pub digest_age_ms: Option<u64>,
}

/// One entry of `GET /v1/owners`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnersView {
    /// The resource.
    pub resource: String,
    /// The effective tickets.
    pub tickets: u16,
    /// The highest fencing term of the resource this node knows (0: none yet).
    #[serde(default)]
    pub term: u64,
    /// Nodes whose records say they hold it, in rank order.
    pub owners: Vec<String>,
    /// The top-`tickets` candidates: owners converge to these. Owners ≠ desired means a
    /// handover is in flight.
    pub desired: Vec<String>,
    /// Every candidate, in rank order.
    pub candidates: Vec<String>,
    /// Whether this node holds it.
    pub held_here: bool,
    /// For how long this node has held it, in milliseconds.
    pub held_for_ms: Option<u64>,
}

/// One server-sent event of `GET /v1/events` (its SSE event name is `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Milliseconds since the node started.
    pub at_ms: u64,
    /// Wall-clock time, unix milliseconds.
    pub unix_ms: u64,
    /// `member-up`, `suspect`, `alive`, `down`; `acquired`, `lost`, `yielded` (by this
    /// node); `owners` (the holders of a resource changed in this node's view: `reason`
    /// lists them); `state` (this node's).
    pub kind: String,
    /// The member concerned (`name@addr` when its name is known, else `addr`).
    pub member: Option<String>,
    /// The resource concerned.
    pub resource: Option<String>,
    /// Why (a loss reason, a new state, or `forced` for a forced yield).
    pub reason: Option<String>,
}

/// Everything a request may need, taken on the protocol thread.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub node: NodeView,
    pub members: Vec<MemberView>,
    pub owners: Vec<OwnersView>,
    pub stats: crate::proto::Stats,
    pub owned: usize,
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

pub(crate) fn snapshot(core: &Core, now: Duration) -> Snapshot {
    // The node itself first: it is a member of its own view.
    let own = MemberView {
        name: Some(core.name().to_string()),
        addr: core.id().addr(),
        boot: core.id().boot(),
        state: "alive".to_string(),
        incarnation: 0,
        view_digest: Some(hex(core.view_digest())),
        digest_age_ms: Some(0),
    };
    let members: Vec<MemberView> = std::iter::once(own)
        .chain(core.member_infos().into_iter().map(|m| {
            let reported = core.reported_digests().get(&m.addr);
            MemberView {
                name: m.name,
                addr: m.addr,
                boot: m.boot,
                state: m.state.as_str().to_string(),
                incarnation: m.incarnation,
                view_digest: reported.map(|(d, _)| hex(*d)),
                digest_age_ms: reported.map(|(_, at)| millis(now.saturating_sub(*at))),
            }
        }))
        .collect();
    let mut resources = core.resources();
    resources.extend(core.own_record().claims.into_iter().map(|c| c.resource));
    resources.sort();
    resources.dedup();
    let names = |list: Vec<crate::proto::OwnerInfo>| list.into_iter().map(|o| o.name).collect();
    let owners: Vec<OwnersView> = resources
        .into_iter()
        .map(|resource| {
            let owners = core.owners(&resource);
            let since = core.held_since(&resource);
            OwnersView {
                tickets: owners.tickets,
                term: core.term(&resource),
                owners: names(owners.holders),
                desired: names(owners.desired),
                candidates: names(core.candidates(&resource)),
                held_here: core.own_record().claim(&resource).is_some_and(|c| c.held),
                held_for_ms: since.map(|t| millis(now.saturating_sub(t))),
                resource,
            }
        })
        .collect();
    let owned = owners.iter().filter(|o| o.held_here).count();
    Snapshot {
        node: NodeView {
            name: core.name().to_string(),
            addr: core.id().addr(),
            boot: core.id().boot(),
            state: core.state().as_str().to_string(),
            view_digest: hex(core.view_digest()),
            safety: "available".to_string(),
            members: core.live_members(),
            uptime_ms: millis(core.uptime(now)),
        },
        members,
        owners,
        stats: core.stats().clone(),
        owned,
    }
}

/// The driver's side: turns core events into [`EventView`]s for subscribers.
#[derive(Clone, Debug)]
pub(crate) struct EventSink {
    sender: broadcast::Sender<EventView>,
    history: Arc<Mutex<VecDeque<EventView>>>,
}

/// Events kept for late subscribers.
const HISTORY: usize = 256;

impl EventSink {
    pub fn new() -> Self {
        EventSink {
            sender: broadcast::channel(1024).0,
            history: Arc::default(),
        }
    }

    pub fn publish(&self, core: &Core, now: Duration, event: &Event) {
        let member = |id: &crate::proto::NodeId| {
            Some(match core.name_at(&id.addr()) {
                Some(name) => format!("{name}@{}", id.addr()),
                None => id.addr().to_string(),
            })
        };
        let (kind, member, resource, reason) = match event {
            Event::MemberUp(id) => ("member-up", member(id), None, None),
            Event::MemberDown(id) => ("down", member(id), None, None),
            Event::MemberSuspect(id) => ("suspect", member(id), None, None),
            Event::MemberAlive(id) => ("alive", member(id), None, None),
            Event::Acquired { resource, .. } => ("acquired", None, Some(resource.clone()), None),
            Event::Lost {
                resource, reason, ..
            } => (
                "lost",
                None,
                Some(resource.clone()),
                Some(reason.to_string()),
            ),
            Event::Yielded {
                resource, forced, ..
            } => (
                "yielded",
                None,
                Some(resource.clone()),
                forced.then(|| "forced".to_string()),
            ),
            Event::StateChanged(state) => ("state", None, None, Some(state.to_string())),
            Event::OwnersChanged { resource, owners } => {
                let holders: Vec<&str> = owners.holders.iter().map(|o| o.name.as_str()).collect();
                (
                    "owners",
                    None,
                    Some(resource.clone()),
                    Some(holders.join(",")),
                )
            }
            _ => return,
        };
        let view = EventView {
            at_ms: millis(core.uptime(now)),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, millis),
            kind: kind.to_string(),
            member,
            resource,
            reason,
        };
        let mut history = self.history.lock().expect("not poisoned");
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(view.clone());
        let _ = self.sender.send(view);
    }
}

#[derive(Clone)]
struct AppState {
    commands: mpsc::UnboundedSender<Command>,
    events: EventSink,
}

impl AppState {
    async fn snapshot(&self) -> Result<Snapshot, Response> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the node has stopped",
            )
                .into_response()
        };
        self.commands
            .send(Command::Inspect(Box::new(move |core, now| {
                let _ = tx.send(snapshot(core, now));
            })))
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }
}

/// Binds `addr` and serves the endpoint on its own thread until the node stops.
pub(crate) fn serve(
    addr: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    events: EventSink,
) -> Result<SocketAddr, Error> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::DebugBind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::DebugBind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::DebugBind { addr, source })?;
    let state = AppState { commands, events };
    let closed = state.commands.clone();
    std::thread::Builder::new()
        .name("gossip-election:debug".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = Router::new()
                    .route("/", get(dashboard))
                    .route("/v1/node", get(node))
                    .route("/v1/members", get(members))
                    .route("/v1/owners", get(owners))
                    .route("/v1/events", get(event_stream))
                    .route("/metrics", get(metrics))
                    .with_state(state);
                let shutdown = async move { closed.closed().await };
                if let Err(err) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::warn!(%err, "debug endpoint stopped");
                }
            });
        })
        .map_err(Error::Spawn)?;
    Ok(local)
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn node(State(state): State<AppState>) -> Result<Json<NodeView>, Response> {
    Ok(Json(state.snapshot().await?.node))
}

async fn members(State(state): State<AppState>) -> Result<Json<Vec<MemberView>>, Response> {
    Ok(Json(state.snapshot().await?.members))
}

async fn owners(State(state): State<AppState>) -> Result<Json<Vec<OwnersView>>, Response> {
    Ok(Json(state.snapshot().await?.owners))
}

async fn event_stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe first, then replay the history: nothing falls between the two.
    let receiver = state.events.sender.subscribe();
    let history: VecDeque<EventView> = state.events.history.lock().expect("not poisoned").clone();
    let last = history.back().map(|e| (e.at_ms, e.kind.clone()));
    let stream = futures_util::stream::unfold(
        (history, receiver, last, false),
        |(mut history, mut receiver, last, mut live)| async move {
            let view = loop {
                if let Some(view) = history.pop_front() {
                    break view;
                }
                match receiver.recv().await {
                    Ok(view) => {
                        // Skip what the history already replayed.
                        if !live && last.as_ref().is_some_and(|(at, _)| view.at_ms <= *at) {
                            continue;
                        }
                        live = true;
                        break view;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            };
            let event = SseEvent::default()
                .event(view.kind.clone())
                .json_data(&view)
                .unwrap_or_default();
            Some((Ok(event), (history, receiver, last, live)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(state): State<AppState>) -> Result<Response, Response> {
    let snapshot = state.snapshot().await?;
    let text = render_metrics(&snapshot);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn render_metrics(s: &Snapshot) -> String {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;

    type Labels = Vec<(String, String)>;
    let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let mut registry = Registry::with_prefix("gossip_election");
    let st = &s.stats;

    let members = Family::<Labels, Gauge>::default();
    for state in ["alive", "suspect", "down"] {
        let n = s.members.iter().filter(|m| m.state == state).count();
        members.get_or_create(&label("state", state)).set(n as i64);
    }
    registry.register(
        "members",
        "Members by state, as this node sees them",
        members,
    );

    let node_state = Family::<Labels, Gauge>::default();
    for state in crate::NodeState::ALL {
        let on = s.node.state == state.as_str();
        node_state
            .get_or_create(&label("state", state.as_str()))
            .set(i64::from(on));
    }
    registry.register(
        "node_state",
        "1 for the state this node is in (no-quorum: quorum mode, no majority live), 0 for the others",
        node_state,
    );

    let owned = Gauge::<i64>::default();
    owned.set(s.owned as i64);
    registry.register(
        "owned_tickets",
        "Resources this node holds a ticket of",
        owned,
    );

    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    registry.register("acquisitions", "Tickets acquired", counter(st.acquisitions));
    registry.register("losses", "Leases lost", counter(st.losses));
    registry.register("yields", "Tickets yielded", counter(st.yields));
    registry.register(
        "escapes",
        "Acquisitions that went ahead past blockers that neither yielded nor went down",
        counter(st.escapes),
    );
    registry.register(
        "ready_escapes",
        "Times this node became ready while records it could not get were missing",
        counter(st.ready_escapes),
    );
    registry.register(
        "fences",
        "Quorum mode: tickets given up because no majority renewed the promises in time",
        counter(st.fences),
    );
    registry.register(
        "view_changes",
        "Changes of this node's view",
        counter(st.view_changes),
    );
    registry.register(
        "suspicions_raised",
        "Members seen turning suspect",
        counter(st.suspicions_raised),
    );
    registry.register(
        "suspicions_refuted",
        "Suspected members seen alive again",
        counter(st.suspicions_refuted),
    );

    let in_out = |received: u64, sent: u64| {
        let family = Family::<Labels, Counter<u64>>::default();
        family
            .get_or_create(&label("direction", "in"))
            .inc_by(received);
        family
            .get_or_create(&label("direction", "out"))
            .inc_by(sent);
        family
    };
    registry.register(
        "datagrams",
        "Datagrams received and sent",
        in_out(st.datagrams_in, st.datagrams_out),
    );
    registry.register(
        "bytes",
        "Datagram bytes received and sent",
        in_out(st.bytes_in, st.bytes_out),
    );

    let dropped = Family::<Labels, Counter<u64>>::default();
    for reason in crate::wire::DropReason::ALL {
        let n = st.dropped.get(&reason).copied().unwrap_or(0);
        dropped
            .get_or_create(&label("reason", reason.as_str()))
            .inc_by(n);
    }
    registry.register(
        "dropped_datagrams",
        "Incoming datagrams dropped, by reason",
        dropped,
    );

    let failover = Gauge::<f64, AtomicU64>::default();
    failover.set(st.last_failover.map_or(0.0, |d| d.as_secs_f64()));
    registry.register(
        "last_failover_seconds",
        "The last failover this node took part in: from first seeing the previous holder suspected (or down) until it acquired",
        failover,
    );

    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
