//! A fault-injecting TCP proxy on loopback, between callgate and a real `redis-server`.
//!
//! It forwards bytes both ways until told to misbehave:
//! - [`Fault::Silent`]: every flow, open or new, stops forwarding in both directions without
//!   closing (no FIN, no RST): a black-holed flow. Flows wedged this way stay wedged after the
//!   fault is cleared, as a flow whose NAT entry was lost would; only new flows work again.
//! - [`Fault::TruncateFirstReply`]: every new flow forwards only the first `n` bytes of the
//!   server's first reply (the connection handshake), then closes both sides.
//!
//! [`sever`](FaultProxy::sever) closes every open flow (an ordinary I/O fault), which makes the
//! client reconnect through whatever fault is set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does to flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Stop forwarding, both ways, on every flow; keep the sockets open.
    Silent,
    /// New flows: forward only the first `n` bytes of the server's first reply, then close.
    TruncateFirstReply(usize),
}

/// One proxied flow's state, set by the proxy and obeyed by its two pumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    Wedged,
    Closed,
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    flows: Mutex<Vec<watch::Sender<Flow>>>,
    /// Flows accepted so far.
    opened: AtomicUsize,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop and every pump; dropped (aborted) with the proxy.
    _tasks: Arc<Mutex<JoinSet<()>>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::Sender::new(Fault::None),
            flows: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept = {
            let (shared, tasks) = (shared.clone(), tasks.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let flow = proxy_flow(shared.clone(), client);
                    tasks.lock().unwrap().spawn(flow);
                }
            }
        };
        tasks.lock().unwrap().spawn(accept);
        FaultProxy {
            addr,
            shared,
            _tasks: tasks,
        }
    }

    /// A Redis URL through the proxy, with `password` if given.
    pub fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(pw) => format!("redis://:{pw}@{}", self.addr),
            None => format!("redis://{}", self.addr),
        }
    }

    /// Sets the fault for every flow from now on; `Silent` also wedges the open flows.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
        if fault == Fault::Silent {
            for flow in self.shared.flows.lock().unwrap().iter() {
                flow.send_if_modified(|f| {
                    let open = *f == Flow::Open;
                    if open {
                        *f = Flow::Wedged;
                    }
                    open
                });
            }
        }
    }

    /// How many flows the client opened so far (its connection attempts).
    pub fn flows_opened(&self) -> usize {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Closes every open flow (both sockets), as a dropped connection would.
    pub fn sever(&self) {
        let mut flows = self.shared.flows.lock().unwrap();
        for flow in flows.iter() {
            flow.send_if_modified(|f| {
                let open = *f == Flow::Open;
                if open {
                    *f = Flow::Closed;
                }
                open
            });
        }
        flows.retain(|f| *f.borrow() != Flow::Closed);
    }
}

async fn proxy_flow(shared: Arc<Shared>, client: TcpStream) {
    let fault = *shared.fault.borrow();
    shared.opened.fetch_add(1, Ordering::Relaxed);
    let state = watch::Sender::new(if fault == Fault::Silent {
        Flow::Wedged
    } else {
        Flow::Open
    });
    shared.flows.lock().unwrap().push(state.clone());
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let truncate = match fault {
        Fault::TruncateFirstReply(n) => Some(n),
        _ => None,
    };
    // Each pump ends when its flow is closed; a wedged pump waits, holding its sockets open.
    tokio::join!(
        pump(client_read, server_write, state.clone(), None),
        pump(server_read, client_write, state.clone(), truncate),
    );
    state.send_replace(Flow::Closed);
}

/// Copies `from` to `to` while the flow is open. With `limit`, forwards that many bytes of the
/// first read, then closes the flow.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    flow: watch::Sender<Flow>,
    limit: Option<usize>,
) {
    let mut state = flow.subscribe();
    // One side hung up, or the handshake was cut: the whole flow closes.
    let close = || {
        flow.send_replace(Flow::Closed);
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let flow = *state.borrow_and_update();
        match flow {
            Flow::Closed => return,
            Flow::Wedged => {
                // Hold both sockets, forward nothing, until closed or the proxy is dropped.
                let _ = state.wait_for(|f| *f == Flow::Closed).await;
                return;
            }
            Flow::Open => {}
        }
        let n = tokio::select! {
            _ = state.changed() => continue,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    close();
                    return;
                }
                Ok(n) => n,
            },
        };
        // The state may have changed while reading: a wedged flow forwards nothing more.
        if *state.borrow() != Flow::Open {
            continue;
        }
        if let Some(limit) = limit {
            let _ = to.write_all(&buf[..n.min(limit)]).await;
            let _ = to.shutdown().await;
            close();
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            close();
            return;
        }
    }
}
