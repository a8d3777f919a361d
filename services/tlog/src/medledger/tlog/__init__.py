"""medledger.tlog: the Merkle tree, proofs, checkpoints and signed notes of the ledger.

Pure and synchronous apart from note signing (whose keys may live in Vault); no I/O. Used by the
ledger (sequencer and proofs), the witness, the CLI and every offline verifier.

Modules, one job each: ``hashing`` (RFC 9162 hashes), ``reference`` (the RFC's recursive
definitions, for tests and audits), ``nodes`` (perfect-subtree ids), ``proof_builder`` (which
stored nodes make a proof), ``verify`` (independent RFC 9162 verification), ``compact`` (the
sequencer's right border), ``tiles`` (C2SP tlog-tiles layout and read costs), ``checkpoint``,
``note`` and ``cosignature`` (C2SP checkpoints, signed notes and witness cosignatures).
"""

from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.compact import CompactRange, NodeCallback
from medledger.tlog.cosignature import (
    COSIGNATURE_SIZE,
    SIG_COSIGNATURE_V1,
    CosignatureVerifier,
    Cosigner,
    cosignature_timestamp,
    cosigned_message,
    verify_checkpoint,
)
from medledger.tlog.errors import CheckpointError, NoteError, ProofError, TlogError
from medledger.tlog.hashing import EMPTY_ROOT, HASH_SIZE, border_hash, leaf_hash, node_hash
from medledger.tlog.nodes import NodeId, range_nodes, root_nodes
from medledger.tlog.note import (
    KEY_ID_SIZE,
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    SIG_ED25519,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    VerifierKey,
    check_key_name,
    format_note,
    key_id,
    open_note,
    parse_note,
    sign_note,
)
from medledger.tlog.proof_builder import ProofPlan, consistency_nodes, inclusion_nodes
from medledger.tlog.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    Tile,
    TileCoordinates,
    TileSpan,
    entries_path,
    node_hash_from_tile,
    stored_node,
    tile_coordinates,
    tile_for_node,
    tile_path,
    tile_span,
    tiles_for_nodes,
    tree_tiles,
)
from medledger.tlog.verify import (
    root_from_consistency_proof,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "COSIGNATURE_SIZE",
    "EMPTY_ROOT",
    "HASH_SIZE",
    "KEY_ID_SIZE",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Checkpoint",
    "CheckpointError",
    "CompactRange",
    "CosignatureVerifier",
    "Cosigner",
    "Ed25519Signer",
    "Ed25519Verifier",
    "NodeCallback",
    "NodeId",
    "Note",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "ProofPlan",
    "Tile",
    "TileCoordinates",
    "TileSpan",
    "TlogError",
    "VerifierKey",
    "border_hash",
    "check_key_name",
    "consistency_nodes",
    "cosignature_timestamp",
    "cosigned_message",
    "entries_path",
    "format_note",
    "inclusion_nodes",
    "key_id",
    "leaf_hash",
    "node_hash",
    "node_hash_from_tile",
    "open_note",
    "parse_note",
    "range_nodes",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_nodes",
    "sign_note",
    "stored_node",
    "tile_coordinates",
    "tile_for_node",
    "tile_path",
    "tile_span",
    "tiles_for_nodes",
    "tree_tiles",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]
