//! The limits layer of the request pipeline: what one client connection, and all of them, may
//! hold. Connections are counted in all and per IP address and refused past
//! `connections.max_total` / `connections.max_per_ip`; a fetch reserves the bytes its response
//! may take on its connection's budget (`connections.max_response_bytes`) and on the agent's
//! (`connections.max_total_response_bytes`) before it runs, and gives them back once the
//! response is written — so a client that stops reading its responses stops being read from,
//! and memory stays bounded whatever clients do. Request frames are bounded the same way: a
//! frame's bytes are reserved on the agent's request budget
//! (`connections.max_total_request_bytes`) before its body is read, and given back once its
//! response is written. Handlers never see any of this.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use silt_common::config::ConnectionSettings;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `connections.max_total` connections are open.
    Total,
    /// `connections.max_per_ip` connections are open from this address.
    PerIp,
}

/// Connection and response-memory limits shared by every connection of an agent.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// The settings in force.
    pub settings: ConnectionSettings,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    responses: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    /// Connections refused because too many were open in all.
    pub refused_total: AtomicU64,
    /// Connections refused because too many were open from one address.
    pub refused_per_ip: AtomicU64,
    /// Connections closed for sending nothing within `connections.idle_timeout_ms`.
    pub idle_closed: AtomicU64,
}

/// An admitted connection; counted until dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Response bytes reserved for one fetch, on its connection and on the agent.
#[derive(Debug)]
pub struct ResponsePermit {
    _connection: OwnedSemaphorePermit,
    _agent: OwnedSemaphorePermit,
    /// Bytes reserved: the most the response may carry.
    pub bytes: usize,
}

fn permits(bytes: usize) -> u32 {
    u32::try_from(bytes.max(1)).unwrap_or(u32::MAX)
}

impl ConnectionLimits {
    /// Limits under `settings`.
    pub fn new(settings: ConnectionSettings) -> Arc<Self> {
        Arc::new(Self {
            responses: Arc::new(Semaphore::new(
                settings
                    .max_total_response_bytes
                    .min(Semaphore::MAX_PERMITS),
            )),
            requests: Arc::new(Semaphore::new(
                settings.max_total_request_bytes.min(Semaphore::MAX_PERMITS),
            )),
            settings,
            open: Mutex::new((0, HashMap::new())),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 >= self.settings.max_total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let here = g.1.get(&ip).copied().unwrap_or(0);
        if here >= self.settings.max_per_ip {
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        g.0 += 1;
        *g.1.entry(ip).or_default() += 1;
        Ok(Admitted {
            limits: self.clone(),
            ip,
        })
    }

    /// A fresh response budget for one connection.
    pub fn connection_budget(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(
            self.settings.max_response_bytes.min(Semaphore::MAX_PERMITS),
        ))
    }

    /// Reserves room for a fetch response of up to `wanted` bytes (clamped to the
    /// connection's budget), waiting while the connection's or the agent's responses hold too
    /// much; the connection is not read meanwhile.
    pub async fn reserve(&self, connection: &Arc<Semaphore>, wanted: usize) -> ResponsePermit {
        let bytes = wanted.clamp(1, self.settings.max_response_bytes);
        let n = permits(bytes);
        let c = connection
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("connection budget never closes");
        let a = self
            .responses
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("agent budget never closes");
        ResponsePermit {
            _connection: c,
            _agent: a,
            bytes,
        }
    }

    /// Reserves the bytes of a request frame of `size` bytes before it is read, waiting while
    /// the requests being read or handled hold the agent's request budget. A frame larger than
    /// the whole budget reserves all of it.
    pub async fn reserve_request(&self, size: usize) -> OwnedSemaphorePermit {
        let n = permits(size.min(self.request_budget()));
        self.requests
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("request budget never closes")
    }

    fn request_budget(&self) -> usize {
        self.settings
            .max_total_request_bytes
            .min(Semaphore::MAX_PERMITS)
    }

    /// Bytes of request frames reserved now, over all connections.
    pub fn request_bytes_held(&self) -> usize {
        self.request_budget()
            .saturating_sub(self.requests.available_permits())
    }

    /// Bytes of fetch responses reserved now, over all connections.
    pub fn response_bytes_held(&self) -> usize {
        self.settings
            .max_total_response_bytes
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.responses.available_permits())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConnectionSettings {
        ConnectionSettings {
            max_total: 3,
            max_per_ip: 2,
            max_response_bytes: 100,
            max_total_response_bytes: 150,
            max_total_request_bytes: 1000,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn request_bytes_are_bounded_in_all() {
        let l = ConnectionLimits::new(settings());
        let a = l.reserve_request(600).await;
        let b = l.reserve_request(400).await;
        assert_eq!(l.request_bytes_held(), 1000);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), l.reserve_request(1));
        assert!(wait.await.is_err(), "the budget is spent");
        drop(a);
        let huge = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            l.reserve_request(1 << 30),
        );
        assert!(
            huge.await.is_err(),
            "a frame larger than the budget waits for all of it"
        );
        drop(b);
        let all = l.reserve_request(1 << 30).await;
        assert_eq!(l.request_bytes_held(), 1000, "and then holds all of it");
        drop(all);
        assert_eq!(l.request_bytes_held(), 0);
    }

    #[test]
    fn connections_are_counted_in_all_and_per_address() {
        let l = ConnectionLimits::new(settings());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::PerIp);
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::Total);
        drop(a1);
        assert!(l.admit(b).is_ok(), "a closed connection frees its place");
        assert_eq!(l.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(l.refused_per_ip.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn response_bytes_are_bounded_per_connection_and_in_all() {
        let l = ConnectionLimits::new(settings());
        let (c1, c2) = (l.connection_budget(), l.connection_budget());
        let p = l.reserve(&c1, 1 << 30).await;
        assert_eq!(p.bytes, 100, "clamped to the connection's budget");
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), l.reserve(&c1, 10));
        assert!(wait.await.is_err(), "the connection's budget is spent");
        let q = l.reserve(&c2, 50).await;
        assert_eq!(l.response_bytes_held(), 150);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), l.reserve(&c2, 10));
        assert!(wait.await.is_err(), "the agent's budget is spent");
        drop(p);
        let r = l.reserve(&c2, 10).await;
        assert_eq!(r.bytes, 10);
        drop((q, r));
        assert_eq!(l.response_bytes_held(), 0);
    }
}
