//! Hostile and unlucky datagrams: bounded answers, no state from strangers, no panics.

use super::*;
