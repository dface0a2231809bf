//! `warren status`: how deep the queues are and whether anyone consumes them.

use serde::Serialize;

use crate::error::{ProducerError, Result};
use crate::producer::{Producer, QueueDepth};

/// Depth of warren's queues.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The task queue: ready tasks and consuming workers.
    pub tasks: NamedDepth,
    /// The dead-letter queue.
    pub dead: NamedDepth,
    /// The shared results queue (results of tasks submitted without `reply_to`).
    pub results: NamedDepth,
}

/// One queue's name and depth.
#[derive(Debug, Clone, Serialize)]
pub struct NamedDepth {
    /// The queue's name.
    pub queue: String,
    /// Ready messages (not counting ones delivered and not yet acknowledged).
    pub messages: u32,
    /// Consumers attached (workers, for the task queue).
    pub consumers: u32,
}

/// Reads the depth of the task, dead-letter and results queues.
pub async fn status(producer: &Producer) -> Result<Status> {
    let topology = producer.topology().clone();
    let depth = |queue: String| async move {
        let QueueDepth {
            messages,
            consumers,
        } = producer.inspect_queue(&queue).await?;
        Ok::<_, ProducerError>(NamedDepth {
            queue,
            messages,
            consumers,
        })
    };
    Ok(Status {
        tasks: depth(topology.tasks).await?,
        dead: depth(topology.dead).await?,
        results: depth(topology.results).await?,
    })
}
