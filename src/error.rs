//! The one error type.

/// Everything that can go wrong in headcount, with messages that name the bad value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every shard is claimed.
    #[error(
        "all {shards} shards are claimed: drop a Shard, or start the engine with more (Engine::builder().shards(n))"
    )]
    NoFreeShard {
        /// How many shards the engine has.
        shards: usize,
    },
    /// The topic table has no free id (live topics plus topics waiting to be retired).
    #[error(
        "the topic table is full ({capacity} topics): raise Engine::builder().max_topics(n), or lower retire_after so idle topics free their ids sooner"
    )]
    TopicsFull {
        /// The table's capacity.
        capacity: usize,
    },
    /// A topic name longer than [`crate::MAX_NAME_LEN`] bytes: the cluster wire could not name it
    /// on peers, so it is never interned.
    #[error(
        "topic name is {len} bytes, over the limit of {max} (the longest name peers can be told)"
    )]
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit, [`crate::MAX_NAME_LEN`].
        max: usize,
    },
    /// A [`crate::Topic`] handle whose topic was retired (or that came from another engine).
    #[error(
        "topic handle #{id} is stale: its topic was retired after staying at zero; look the name up again with Engine::topic"
    )]
    StaleTopic {
        /// The handle's id.
        id: u32,
    },
    /// A builder option is out of range.
    #[error("invalid {option} = {value}: {reason}")]
    Config {
        /// The option's name, as the builder method is called.
        option: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        reason: String,
    },
    /// A socket could not be set up as configured.
    #[error("{option} = {value}: {source}")]
    Net {
        /// The option whose value did not work.
        option: &'static str,
        /// Its value.
        value: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The engine thread could not be started.
    #[error("could not start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}
