//! Feeds the gateway: a route table built from the orchestrator's published view (services'
//! routes and their ready replicas), swapped into the gateway after every change. This keeps
//! the gateway ignorant of services, Runs and the orchestrator.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use domain::{OwnerKind, RunState};

/// How long a replica being stopped may take to finish the requests it has in flight.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

pub fn route_table(view: &orchestrator::View) -> gateway::RouteTable {
    let mut routes = Vec::new();
    for service in &view.services {
        let replicas: Vec<gateway::Replica> = view
            .runs
            .iter()
            .filter(|run| {
                run.owner.kind == OwnerKind::Service
                    && run.owner.name == service.spec.name
                    && run.state == RunState::Ready
            })
            .filter_map(|run| {
                run.port.map(|port| gateway::Replica {
                    run: run.id.to_string(),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                })
            })
            .collect();
        for route in &service.spec.routes {
            routes.push(gateway::Route {
                service: service.spec.name.to_string(),
                host: route.host.clone(),
                path_prefix: route.path_prefix.clone(),
                replicas: replicas.clone(),
                hold: service.spec.hold,
                max_body: service.spec.max_body.bytes(),
                api_keys: service.spec.api_keys.iter().map(|key| key.0).collect(),
            });
        }
    }
    gateway::RouteTable { routes }
}

/// Keeps the gateway's table in step with the orchestrator until the view channel closes.
pub async fn follow(orchestrator: orchestrator::Handle, gateway: Arc<gateway::Gateway>) {
    let mut updates = orchestrator.view_updates();
    loop {
        let table = route_table(&updates.borrow_and_update());
        gateway.update(table);
        if updates.changed().await.is_err() {
            return;
        }
    }
}
