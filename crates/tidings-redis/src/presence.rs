//! Cluster-wide presence, kept in Redis by every server for its own
//! connections.
//!
//! Keys of one hub share a hash tag (`{<prefix><hub>}:presence…`), so they
//! live in one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:conns` | hash | connection id → `server|user` |
//! | `…:server:<id>` | set | the connections of one server (to purge it) |
//! | `…:user:<user>` | set | a user's connection ids |
//! | `…:users` | hash | user → number of connections (its length is the online user count) |
//! | `…:group:<group>` | set | the group's connection ids |
//! | `…:cgroups:<id>` | set | a connection's groups |
//!
//! Every change is one Lua script run, so a reader never sees half of one.
//! A server whose heartbeat expired is purged by whichever server notices
//! first; a server that reconnects after a Redis failure writes its own
//! entries again (Redis may have restarted empty).

use redis::{RedisResult, Script};
use tidings::Member;

use crate::connection::Connection;

const SCRIPT: &str = r#"
local r = KEYS[1]
local op = ARGV[1]
local function forget(c)
  local v = redis.call('HGET', r .. ':conns', c)
  if not v then return 0 end
  local i = string.find(v, '|', 1, true)
  local s = string.sub(v, 1, i - 1)
  local u = string.sub(v, i + 1)
  redis.call('HDEL', r .. ':conns', c)
  redis.call('SREM', r .. ':server:' .. s, c)
  if u ~= '' then
    redis.call('SREM', r .. ':user:' .. u, c)
    if redis.call('HINCRBY', r .. ':users', u, -1) <= 0 then
      redis.call('HDEL', r .. ':users', u)
    end
  end
  for _, g in ipairs(redis.call('SMEMBERS', r .. ':cgroups:' .. c)) do
    redis.call('SREM', r .. ':group:' .. g, c)
  end
  redis.call('DEL', r .. ':cgroups:' .. c)
  return 1
end
if op == 'connect' then
  local c, s, u = ARGV[2], ARGV[3], ARGV[4]
  if redis.call('HSETNX', r .. ':conns', c, s .. '|' .. u) == 0 then return 0 end
  redis.call('SADD', r .. ':server:' .. s, c)
  if u ~= '' then
    redis.call('SADD', r .. ':user:' .. u, c)
    redis.call('HINCRBY', r .. ':users', u, 1)
  end
  return 1
elseif op == 'move' then
  local c, s = ARGV[2], ARGV[3]
  local v = redis.call('HGET', r .. ':conns', c)
  if not v then return 0 end
  local i = string.find(v, '|', 1, true)
  redis.call('SREM', r .. ':server:' .. string.sub(v, 1, i - 1), c)
  redis.call('HSET', r .. ':conns', c, s .. '|' .. string.sub(v, i + 1))
  redis.call('SADD', r .. ':server:' .. s, c)
  return 1
elseif op == 'disconnect' then
  return forget(ARGV[2])
elseif op == 'purge' then
  local n = 0
  for _, c in ipairs(redis.call('SMEMBERS', r .. ':server:' .. ARGV[2])) do
    n = n + forget(c)
  end
  redis.call('DEL', r .. ':server:' .. ARGV[2])
  return n
elseif op == 'join' then
  local c, g = ARGV[2], ARGV[3]
  if redis.call('HEXISTS', r .. ':conns', c) == 0 then return 0 end
  redis.call('SADD', r .. ':group:' .. g, c)
  redis.call('SADD', r .. ':cgroups:' .. c, g)
  return 1
elseif op == 'leave' then
  local c, g = ARGV[2], ARGV[3]
  redis.call('SREM', r .. ':group:' .. g, c)
  redis.call('SREM', r .. ':cgroups:' .. c, g)
  return 1
elseif op == 'members' then
  local out = {}
  for _, c in ipairs(redis.call('SMEMBERS', r .. ':group:' .. ARGV[2])) do
    local v = redis.call('HGET', r .. ':conns', c)
    if v then
      local i = string.find(v, '|', 1, true)
      table.insert(out, c)
      table.insert(out, string.sub(v, i + 1))
    end
  end
  return out
end
return redis.error_reply('unknown presence operation')
"#;

/// The presence keys of one hub.
#[derive(Debug)]
pub(crate) struct Presence {
    root: String,
    script: Script,
}

impl Presence {
    pub(crate) fn new(base: &str) -> Self {
        Presence {
            root: format!("{{{base}}}:presence"),
            script: Script::new(SCRIPT),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        connection: &mut Connection,
        args: &[&str],
    ) -> RedisResult<T> {
        let mut invocation = self.script.key(&self.root);
        for arg in args {
            invocation.arg(*arg);
        }
        invocation.invoke_async(connection).await
    }

    pub(crate) async fn connect(
        &self,
        connection: &mut Connection,
        id: &str,
        server: &str,
        user: Option<&str>,
    ) -> RedisResult<()> {
        self.run::<i64>(
            connection,
            &["connect", id, server, user.unwrap_or_default()],
        )
        .await
        .map(drop)
    }

    /// A connection listed under another server is now `server`'s (it
    /// moved); false if it is not listed at all.
    pub(crate) async fn moved(
        &self,
        connection: &mut Connection,
        id: &str,
        server: &str,
    ) -> RedisResult<bool> {
        self.run::<i64>(connection, &["move", id, server])
            .await
            .map(|moved| moved == 1)
    }

    pub(crate) async fn disconnect(
        &self,
        connection: &mut Connection,
        id: &str,
    ) -> RedisResult<()> {
        self.run::<i64>(connection, &["disconnect", id])
            .await
            .map(drop)
    }

    /// Forgets every connection of `server`; returns how many.
    pub(crate) async fn purge(
        &self,
        connection: &mut Connection,
        server: &str,
    ) -> RedisResult<i64> {
        self.run(connection, &["purge", server]).await
    }

    pub(crate) async fn join(
        &self,
        connection: &mut Connection,
        id: &str,
        group: &str,
    ) -> RedisResult<()> {
        self.run::<i64>(connection, &["join", id, group])
            .await
            .map(drop)
    }

    pub(crate) async fn leave(
        &self,
        connection: &mut Connection,
        id: &str,
        group: &str,
    ) -> RedisResult<()> {
        self.run::<i64>(connection, &["leave", id, group])
            .await
            .map(drop)
    }

    pub(crate) async fn members(
        &self,
        connection: &mut Connection,
        group: &str,
    ) -> RedisResult<Vec<Member>> {
        let flat: Vec<String> = self.run(connection, &["members", group]).await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| {
                let user = (!pair[1].is_empty()).then(|| pair[1].clone());
                Member::new(pair[0].clone(), user)
            })
            .collect())
    }

    pub(crate) async fn connections_of_user(
        &self,
        connection: &mut Connection,
        user: &str,
    ) -> RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(format!("{}:user:{user}", self.root))
            .query_async(connection)
            .await
    }

    pub(crate) async fn groups_of(
        &self,
        connection: &mut Connection,
        id: &str,
    ) -> RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(format!("{}:cgroups:{id}", self.root))
            .query_async(connection)
            .await
    }

    pub(crate) async fn user_count(&self, connection: &mut Connection) -> RedisResult<usize> {
        redis::cmd("HLEN")
            .arg(format!("{}:users", self.root))
            .query_async(connection)
            .await
    }

    /// The server holding a connection, if it is connected anywhere.
    pub(crate) async fn owner(
        &self,
        connection: &mut Connection,
        id: &str,
    ) -> RedisResult<Option<String>> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(format!("{}:conns", self.root))
            .arg(id)
            .query_async(connection)
            .await?;
        Ok(value.and_then(|v| v.split_once('|').map(|(server, _)| server.to_owned())))
    }

    /// The connections registered for `server`.
    pub(crate) async fn connections_of_server(
        &self,
        connection: &mut Connection,
        server: &str,
    ) -> RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(format!("{}:server:{server}", self.root))
            .query_async(connection)
            .await
    }
}
