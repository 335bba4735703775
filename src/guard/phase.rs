//! The [`Guard`] trait: one guard as a set of phases, each with a default that lets the
//! command through, in the order they run for a command (like the hook phases of a proxy
//! framework). Never imports a guard: guards import it.

use bytes::{Bytes, BytesMut};

use super::verdict::{CommandView, Verdict};
use crate::command::CommandInfo;
use crate::identity::ClientIdentity;

/// One guard: a value whose phases the engine ([`super::Guards`]) runs, in this order.
///
/// 1. [`Guard::wants`], once per command of the table when the guards are built: the engine
///    keeps one bitmask per command id, so a command no guard wants costs one lookup.
/// 2. [`Guard::engaged`], per command a guard wants, with the command's size, before its
///    keys are found: a guard that acts only now and then (the shed guard, while memory is
///    under pressure) says no here. The engine asks it only of guards whose
///    [`Guard::may_disengage`] is true, from a bitmask made at build.
/// 3. [`Guard::check`], on the command's view: the first verdict other than `Forward`
///    decides and the guards after it do not run.
/// 4. On the reply: a guard that let the command through and wants to see its reply asks
///    for it in `check` with [`CommandView::watch_reply`]; the session calls the watch
///    ([`super::ReplyWatch`]) with the reply when it arrives. The watch, not the guard, is
///    called, because a reload may rebuild the guards while the reply is on its way.
/// 5. [`Guard::when_upstream_down`], instead of all the above, for a command read while
///    Redis is unreachable, asked only of the guards whose [`Guard::wants_when_down`] said
///    yes for the command (a bitmask of its own, so the normal path never sees it).
///
/// And one property: [`Guard::acts_as_user`], whether the guard sends scripts or expiries
/// as the client's Redis user, so the session must learn what that user may run.
///
/// Guards never touch sockets, never block, and keep no state per connection.
pub trait Guard: Send + Sync {
    /// The guard's name, as in metrics and errors.
    fn name(&self) -> &'static str;

    /// Whether the guard's [`Guard::check`] ever acts on this command; asked once per
    /// command when the guards are built. Default: never.
    fn wants(&self, _info: &CommandInfo) -> bool {
        false
    }

    /// Whether [`Guard::engaged`] may say no; asked once when the guards are built.
    /// Default: false, and `engaged` is never asked.
    fn may_disengage(&self) -> bool {
        false
    }

    /// For a guard that may disengage: whether it is engaged for this command whatever
    /// [`Guard::engaged`] would say (the shed guard reads script sources at every level);
    /// asked once per command when the guards are built. Default: no.
    fn always_engaged(&self, _info: &CommandInfo) -> bool {
        false
    }

    /// Whether the guard may act now on a command it wants, of `size` bytes; when no guard
    /// that wants a command is engaged, the command is forwarded without finding its keys.
    /// Asked of every such guard for every command it wants (a guard may count the command
    /// here). Default: always.
    fn engaged(&self, _size: u64) -> bool {
        true
    }

    /// For a guard that may disengage: how many bytes of the writes it wants may still pass
    /// before it engages. [`Guard::engaged`] says no for each of several writes whose sizes
    /// add up to less, as long as they are counted ([`Guard::count_passed`]) and nothing
    /// else is. Default: 0 (engaged now).
    fn headroom(&self) -> u64 {
        0
    }

    /// For a guard that may disengage: count `bytes` of writes it wants that passed without
    /// [`Guard::engaged`] being asked, within its [`Guard::headroom`], as `engaged` counts
    /// one write. Default: nothing to count.
    fn count_passed(&self, _bytes: u64) {}

    /// Decide about one command. Anything written to `out` is used only with a `Rewrite`.
    /// Default: forward.
    fn check(
        &self,
        _cmd: &CommandView<'_>,
        _client: &ClientIdentity,
        _out: &mut BytesMut,
    ) -> Verdict {
        Verdict::Forward
    }

    /// Whether [`Guard::when_upstream_down`] may answer this command; asked once per command
    /// when the guards are built. Default: never.
    fn wants_when_down(&self, _info: &CommandInfo) -> bool {
        false
    }

    /// The reply to give in Redis's place while Redis is unreachable (`resp3`: the client's
    /// protocol), or `None` for the usual error. The view's size, streamed length and wire
    /// encoding are empty. Default: none.
    fn when_upstream_down(
        &self,
        _cmd: &CommandView<'_>,
        _client: &ClientIdentity,
        _resp3: bool,
    ) -> Option<Bytes> {
        None
    }

    /// Whether the guard may send scripts or expiries as the client's Redis user for the
    /// commands it wants, so the session must learn what that user may run
    /// ([`super::ScriptAccess`]). Asked once when the guards are built. Default: no.
    fn acts_as_user(&self) -> bool {
        false
    }
}
