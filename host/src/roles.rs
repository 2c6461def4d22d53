//! The roles a strategy's model requests are sent as: one name for each, and [`PerRole`], one
//! value per role, which every per-role table of the host (providers, models, prices, flags,
//! counts) is.

use std::ops::{Index, IndexMut};

use crate::bindings::types::Role;

impl Role {
    /// Every role, in the order they are shown.
    pub const ALL: [Role; 4] = [Role::Base, Role::Metrics, Role::Judge, Role::Optimizer];

    /// The role's name, as flags, logs and the run log spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Base => "base",
            Role::Metrics => "metrics",
            Role::Judge => "judge",
            Role::Optimizer => "optimizer",
        }
    }

    /// The role named `name` (see [`Role::name`]).
    pub fn named(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    fn slot(self) -> usize {
        match self {
            Role::Base => 0,
            Role::Metrics => 1,
            Role::Judge => 2,
            Role::Optimizer => 3,
        }
    }
}

/// One value per role.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerRole<T>([T; 4]);

impl<T> PerRole<T> {
    /// The map whose value for each role is `value(role)`.
    pub fn from_fn(mut value: impl FnMut(Role) -> T) -> PerRole<T> {
        PerRole(Role::ALL.map(&mut value))
    }

    /// Each role with its value, in [`Role::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Role, &T)> {
        Role::ALL.into_iter().zip(&self.0)
    }

    /// The map of `f` of each value.
    pub fn map<U>(self, mut f: impl FnMut(Role, T) -> U) -> PerRole<U> {
        let mut roles = Role::ALL.into_iter();
        PerRole(
            self.0
                .map(|value| f(roles.next().expect("four roles"), value)),
        )
    }
}

impl<T> Index<Role> for PerRole<T> {
    type Output = T;

    fn index(&self, role: Role) -> &T {
        &self.0[role.slot()]
    }
}

impl<T> IndexMut<Role> for PerRole<T> {
    fn index_mut(&mut self, role: Role) -> &mut T {
        &mut self.0[role.slot()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_named_once_and_read_back() {
        for role in Role::ALL {
            assert_eq!(Role::named(role.name()), Some(role));
        }
        assert_eq!(Role::named("eval"), None);
    }

    #[test]
    fn a_per_role_map_holds_each_role_s_value_in_its_slot() {
        let mut counts = PerRole::from_fn(|role| role.name().len());
        counts[Role::Judge] += 10;
        assert_eq!(counts[Role::Judge], 15);
        assert_eq!(counts[Role::Base], 4);
        let names: Vec<&str> = counts.iter().map(|(role, _)| role.name()).collect();
        assert_eq!(names, ["base", "metrics", "judge", "optimizer"]);
        assert_eq!(counts.map(|_, n| n * 2)[Role::Optimizer], 18);
    }
}
