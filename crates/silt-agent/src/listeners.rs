//! The agent's Kafka listeners: the `DEFAULT` one (`listen`) and the named ones
//! (`[[listeners]]`), each with its security protocol and advertised address, bound at start;
//! [`crate::connection::accept`] serves each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use silt_common::config::{SecurityProtocol, DEFAULT_LISTENER};
use silt_common::Settings;
use silt_meta::layout::agents::Endpoint;
use tokio::net::TcpListener;

use crate::startup::StartError;

/// What a connection knows of the listener it came through.
#[derive(Debug)]
pub struct ListenerInfo {
    /// Its name (`DEFAULT` for `listen`).
    pub name: String,
    /// Its security protocol.
    pub protocol: SecurityProtocol,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
}

/// A bound listener, not yet accepting (the connection layer accepts on it).
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) info: Arc<ListenerInfo>,
    pub(crate) socket: TcpListener,
}

async fn bind_one(
    name: &str,
    listen: &str,
    protocol: SecurityProtocol,
    host: Option<&String>,
    port: Option<u16>,
    setting: &'static str,
    env: &'static str,
) -> Result<Bound, StartError> {
    let err = |source| StartError::Bind {
        addr: listen.to_string(),
        setting,
        env,
        source,
    };
    let socket = TcpListener::bind(listen).await.map_err(err)?;
    let addr = socket.local_addr().map_err(err)?;
    let host = host.cloned().unwrap_or_else(|| {
        let ip = addr.ip();
        if ip.is_unspecified() {
            tracing::warn!(listener = name, "listening on all interfaces without an advertised host; advertising 'localhost'. Set advertised_host so remote clients can connect");
            "localhost".to_string()
        } else {
            ip.to_string()
        }
    });
    Ok(Bound {
        info: Arc::new(ListenerInfo {
            name: name.to_string(),
            protocol,
            addr,
            host,
            port: port.unwrap_or(addr.port()) as i32,
        }),
        socket,
    })
}

/// Binds every configured listener; the first is `DEFAULT`.
pub(crate) async fn bind_all(s: &Settings) -> Result<Vec<Bound>, StartError> {
    let mut out = vec![
        bind_one(
            DEFAULT_LISTENER,
            &s.listen,
            s.security_protocol,
            s.advertised_host.as_ref(),
            s.advertised_port,
            "listen",
            "LISTEN",
        )
        .await?,
    ];
    for l in &s.listeners {
        out.push(
            bind_one(
                &l.name,
                &l.listen,
                l.security_protocol,
                l.advertised_host.as_ref(),
                l.advertised_port,
                "listeners.listen",
                "LISTENERS",
            )
            .await?,
        );
    }
    Ok(out)
}

/// The advertised addresses of the named listeners, as registered.
pub(crate) fn endpoints(bound: &[Bound]) -> BTreeMap<String, Endpoint> {
    bound
        .iter()
        .filter(|b| b.info.name != DEFAULT_LISTENER)
        .map(|b| {
            (
                b.info.name.clone(),
                Endpoint {
                    host: b.info.host.clone(),
                    port: b.info.port,
                },
            )
        })
        .collect()
}
