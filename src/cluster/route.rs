//! Where a command goes in a cluster, from its keys: nowhere in particular
//! ([`Route::Keyless`]), the node serving one slot ([`Route::Slot`]), or nowhere as it
//! stands ([`Route::CrossSlot`]: its keys hash to different slots, which Redis Cluster
//! refuses with `-CROSSSLOT`, and a router splits per slot where it can).
//!
//! The keys are the command table's ([`CommandInfo::key_positions_by`], the key
//! specifications the guards read too); this module only hashes them. Allocation-free: the
//! positions go into a buffer whose capacity the caller keeps. Never does I/O.

use super::slot::key_slot;
use crate::command::{CommandInfo, CommandTable};

/// Where one command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The command names no key: any node may run it (or every primary, for the commands a
    /// router fans out).
    Keyless,
    /// Every key hashes to this slot: the node serving it runs the command.
    Slot(u16),
    /// Keys hash to different slots: no one node runs the command as it stands.
    CrossSlot,
}

/// The route of a command of `argc` arguments, of which `arg(i)` gives those available,
/// described by `info`; `positions` is scratch space for its keys' indices (cleared first,
/// its capacity kept). A key not available (a streamed command's arguments after the one
/// arriving) is not counted: such a command is routed by the keys of its head.
pub fn route<'a>(
    info: &CommandInfo,
    argc: usize,
    arg: impl Fn(usize) -> Option<&'a [u8]>,
    positions: &mut Vec<usize>,
) -> Route {
    positions.clear();
    info.key_positions_by(argc, &arg, positions);
    let mut slots = positions.iter().filter_map(|&i| arg(i)).map(key_slot);
    let Some(first) = slots.next() else {
        return Route::Keyless;
    };
    if slots.all(|slot| slot == first) {
        Route::Slot(first)
    } else {
        Route::CrossSlot
    }
}

/// The route of the whole command `args` (argument 0 its name), looked up in `table`.
pub fn route_args<A: AsRef<[u8]>>(
    table: &CommandTable,
    args: &[A],
    positions: &mut Vec<usize>,
) -> Route {
    let info = table.lookup(args);
    route(
        info,
        args.len(),
        |i| args.get(i).map(AsRef::as_ref),
        positions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::slot::key_slot;

    fn route_of(args: &[&str]) -> Route {
        let table = CommandTable::builtin();
        route_args(&table, args, &mut Vec::new())
    }

    #[test]
    fn keys_in_one_slot_route_to_it_and_across_slots_do_not() {
        let slot = key_slot(b"{u1}");
        assert_eq!(route_of(&["SET", "{u1}a", "v"]), Route::Slot(slot));
        assert_eq!(route_of(&["MGET", "{u1}a", "{u1}b"]), Route::Slot(slot));
        assert_eq!(
            route_of(&["MSET", "{u1}a", "x", "{u1}b", "y"]),
            Route::Slot(slot)
        );
        // "a" and "b" hash to different slots (15495 and 3300).
        assert_eq!(route_of(&["MGET", "a", "b"]), Route::CrossSlot);
        // Values are not keys: MSET's values may hash anywhere.
        assert_eq!(route_of(&["MSET", "a", "b"]), Route::Slot(key_slot(b"a")));
    }

    #[test]
    fn keys_found_by_count_or_keyword_are_hashed_and_values_are_not() {
        assert_eq!(
            route_of(&["EVAL", "return 1", "2", "{t}x", "{t}y", "arg"]),
            Route::Slot(key_slot(b"t"))
        );
        assert_eq!(
            route_of(&["EVAL", "return 1", "2", "a", "b"]),
            Route::CrossSlot
        );
        assert_eq!(
            route_of(&["EVAL", "return 1", "0", "a", "b"]),
            Route::Keyless
        );
        assert_eq!(
            route_of(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                "{s}1",
                "{s}2",
                ">",
                ">"
            ]),
            Route::Slot(key_slot(b"s"))
        );
        assert_eq!(
            route_of(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                "a",
                "b",
                ">",
                ">"
            ]),
            Route::CrossSlot
        );
    }

    #[test]
    fn commands_without_keys_are_keyless() {
        assert_eq!(route_of(&["PING"]), Route::Keyless);
        assert_eq!(route_of(&["INFO", "server"]), Route::Keyless);
        assert_eq!(route_of(&["NOSUCHCOMMAND", "a", "b"]), Route::Keyless);
    }

    #[test]
    fn the_scratch_buffer_keeps_its_capacity() {
        let table = CommandTable::builtin();
        let mut positions = Vec::with_capacity(8);
        route_args(&table, &["MGET", "a", "b", "c"], &mut positions);
        let capacity = positions.capacity();
        route_args(&table, &["GET", "a"], &mut positions);
        assert_eq!(positions, [1]);
        assert_eq!(positions.capacity(), capacity);
    }
}
