//! Several Redis commands sent in one round trip, each reply read back by
//! the name it was asked under rather than by its place in the pipeline:
//! adding or dropping a command cannot shift another's reply.

use std::marker::PhantomData;

use redis::{FromRedisValue, Pipeline, Script, ScriptInvocation, Value};

use crate::redis::Redis;

/// Commands queued so far, and the scripts among them, which a Redis that
/// restarted may have forgotten.
#[derive(Default)]
pub struct RoundTrip {
    pipe: Pipeline,
    scripts: Vec<&'static Script>,
}

/// A claim on the reply of one queued command, typed as the caller reads it.
#[must_use = "a reply asked for should be read"]
pub struct Reply<T> {
    index: usize,
    what: &'static str,
    read_as: PhantomData<fn() -> T>,
}

/// What a sent round trip answered.
pub struct Replies(Vec<Value>);

impl RoundTrip {
    pub fn new() -> RoundTrip {
        RoundTrip::default()
    }

    /// Queues the one command `queue` adds, and names its reply `what`
    /// (for error messages).
    pub fn ask<T: FromRedisValue>(
        &mut self,
        what: &'static str,
        queue: impl FnOnce(&mut Pipeline),
    ) -> Reply<T> {
        let index = self.pipe.len();
        queue(&mut self.pipe);
        assert_eq!(self.pipe.len(), index + 1, "`{what}` must queue exactly one command");
        Reply { index, what, read_as: PhantomData }
    }

    /// Queues a script by its hash; [`RoundTrip::send`] loads it if Redis
    /// does not know it.
    pub fn ask_script<T: FromRedisValue>(
        &mut self,
        what: &'static str,
        script: &'static Script,
        invocation: &ScriptInvocation<'_>,
    ) -> Reply<T> {
        self.scripts.push(script);
        self.ask(what, |pipe| {
            pipe.invoke_script(invocation);
        })
    }

    pub async fn send(self, redis: &Redis) -> redis::RedisResult<Replies> {
        let mut redis = redis.clone();
        match self.pipe.query_async(&mut redis).await {
            // Redis restarted and forgot a script: load them, then once more.
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                for script in &self.scripts {
                    script.load_async(&mut redis).await?;
                }
                self.pipe.query_async(&mut redis).await.map(Replies)
            }
            replies => replies.map(Replies),
        }
    }
}

impl Replies {
    pub fn read<T: FromRedisValue>(&self, reply: Reply<T>) -> anyhow::Result<T> {
        let value = self
            .0
            .get(reply.index)
            .ok_or_else(|| anyhow::anyhow!("no reply for {} in the round trip", reply.what))?;
        T::from_redis_value(value).map_err(|e| anyhow::anyhow!("reading {}: {e}", reply.what))
    }
}
