//! Where the origins listen and run: `127.0.0.1:0`, one accept loop per
//! listener, on the caller's runtime (tests) or on a runtime of their own
//! (the benchmark, whose origin must not share threads with anything else).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The accept loops of one origin and the runtime they run on. Dropping it
/// stops accepting; connections already accepted run on until their runtime
/// ends (the test's, at the end of the test) or, for a runtime of its own,
/// until it is dropped here.
pub(crate) struct Serving {
    handle: Handle,
    accept_loops: Vec<JoinHandle<()>>,
    /// Kept for its threads: dropping it stops them. Declared last, so that
    /// it is dropped after the loops are aborted.
    _runtime: Option<Runtime>,
}

impl Serving {
    /// On the runtime of the caller, which must be inside one.
    pub(crate) fn on_current_runtime() -> Serving {
        Serving {
            handle: Handle::current(),
            accept_loops: Vec::new(),
            _runtime: None,
        }
    }

    /// On a multi-threaded runtime of its own with `threads` workers named
    /// `name`. Dropping it shuts the runtime down, so it must be dropped
    /// outside any runtime.
    pub(crate) fn on_own_runtime(threads: usize, name: &str) -> io::Result<Serving> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Serving {
            handle: runtime.handle().clone(),
            accept_loops: Vec::new(),
            _runtime: Some(runtime),
        })
    }

    /// The runtime its tasks run on.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Binds `127.0.0.1:0` and hands every accepted connection to `serve`
    /// on a task of its own, counting it in `connections`.
    pub(crate) fn listen<F, Fut>(
        &mut self,
        connections: Arc<AtomicU64>,
        serve: F,
    ) -> io::Result<SocketAddr>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Bound with std so that this works outside the runtime too; the
        // tokio listener is made on the runtime, in the accept task.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let task = self.handle.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, connections, serve).await,
                Err(err) => eprintln!("origin {addr}: {err}"),
            }
        });
        self.accept_loops.push(task);
        Ok(addr)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, connections: Arc<AtomicU64>, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Typically EMFILE under a too-large load: back off rather than spin.
                eprintln!("origin: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small responses and messages, each answered at once: Nagle would
        // only add latency.
        let _ = stream.set_nodelay(true);
        connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream));
    }
}
