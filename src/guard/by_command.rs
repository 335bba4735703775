//! Values per command id, computed once from the command table when guards are built.
//! Never looks a command up by name on the hot path.

use crate::command::{CommandInfo, CommandTable};

/// A value per command id, computed from the command table when the guards are built, so a
/// guard tells what kind of command it holds with one index instead of comparing names.
#[derive(Debug)]
pub struct ByCommand<T>(Box<[T]>);

impl<T> Default for ByCommand<T> {
    /// The default value for every command.
    fn default() -> Self {
        ByCommand(Box::new([]))
    }
}

impl<T: Copy + Default> ByCommand<T> {
    /// `kind(info)` for every command of `table`.
    pub fn build(table: &CommandTable, kind: impl Fn(&CommandInfo) -> T) -> Self {
        let mut values = Vec::new();
        for info in table.all() {
            let id = info.id as usize;
            if values.len() <= id {
                values.resize(id + 1, T::default());
            }
            values[id] = kind(info);
        }
        ByCommand(values.into_boxed_slice())
    }

    /// The value for `info` (the default for a command the table did not have).
    #[inline]
    pub fn get(&self, info: &CommandInfo) -> T {
        self.by_id(info.id)
    }

    /// The value for the command with id `id`.
    #[inline]
    pub fn by_id(&self, id: u16) -> T {
        self.0.get(id as usize).copied().unwrap_or_default()
    }
}
