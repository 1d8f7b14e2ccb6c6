//! Moderators' operations (issue 29): IP and CIDR timeouts (`/operations/ipaddr…`) and
//! worker address blocks (`/operations/block_worker_ipaddr/{worker_id}`); and rating a shared,
//! finished request's images (`POST /generate/rate/{id}`), which needs no key: the request's
//! id is the secret, as on the public horde.

use crate::{segment, Client, Result};
use horde_api::operations::{
    AddTimeoutIp, AestheticsPayload, BlockWorkerIp, DeleteTimeoutIp, IpTimeout, RateResponse,
    SimpleMessage,
};
use reqwest::Method;

impl Client {
    /// Every address and block in timeout, with the seconds left (moderators).
    pub async fn ip_timeouts(&self) -> Result<Vec<IpTimeout>> {
        self.call(Method::GET, "/operations/ipaddr", None::<&()>)
            .await
    }

    /// Times an address or CIDR block out for `hours` (moderators).
    pub async fn add_ip_timeout(&self, timeout: &AddTimeoutIp) -> Result<SimpleMessage> {
        self.call(Method::POST, "/operations/ipaddr", Some(timeout))
            .await
    }

    /// Lifts an address's or block's timeout (moderators).
    pub async fn delete_ip_timeout(&self, timeout: &DeleteTimeoutIp) -> Result<SimpleMessage> {
        self.call(Method::DELETE, "/operations/ipaddr", Some(timeout))
            .await
    }

    /// The timeouts that hold one address (moderators).
    pub async fn ip_timeouts_holding(&self, ipaddr: &str) -> Result<Vec<IpTimeout>> {
        let path = format!("/operations/ipaddr/{}", segment(ipaddr));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Times out the address worker `worker_id` last popped from, for `days` (moderators).
    pub async fn block_worker_ip(
        &self,
        worker_id: &str,
        block: &BlockWorkerIp,
    ) -> Result<SimpleMessage> {
        let path = format!("/operations/block_worker_ipaddr/{}", segment(worker_id));
        self.call(Method::PUT, &path, Some(block)).await
    }

    /// Lifts the timeout of the address worker `worker_id` last popped from (moderators).
    pub async fn unblock_worker_ip(&self, worker_id: &str) -> Result<SimpleMessage> {
        let path = format!("/operations/block_worker_ipaddr/{}", segment(worker_id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Rates the images of the shared, finished request `id`; a request is rated once.
    pub async fn rate(&self, id: &str, ratings: &AestheticsPayload) -> Result<RateResponse> {
        let path = format!("/generate/rate/{}", segment(id));
        self.call(Method::POST, &path, Some(ratings)).await
    }
}
