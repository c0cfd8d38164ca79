from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendEntry(_message.Message):
    __slots__ = ("payload", "idempotency_key")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    idempotency_key: str
    def __init__(self, payload: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AppendEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AppendEntry, _Mapping]]] = ...) -> None: ...

class RangeProof(_message.Message):
    __slots__ = ("left_frontier", "consistency_proof")
    LEFT_FRONTIER_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    left_frontier: _containers.RepeatedScalarFieldContainer[bytes]
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, left_frontier: _Optional[_Iterable[bytes]] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendedEntry(_message.Message):
    __slots__ = ("index", "leaf", "duplicate", "inclusion_proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    leaf: bytes
    duplicate: bool
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., leaf: _Optional[bytes] = ..., duplicate: _Optional[bool] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("checkpoint", "entries", "start", "end", "range_proof")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    RANGE_PROOF_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bytes
    entries: _containers.RepeatedCompositeFieldContainer[AppendedEntry]
    start: int
    end: int
    range_proof: RangeProof
    def __init__(self, checkpoint: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[AppendedEntry, _Mapping]]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., range_proof: _Optional[_Union[RangeProof, _Mapping]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("first_tree_size", "witnessed")
    FIRST_TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WITNESSED_FIELD_NUMBER: _ClassVar[int]
    first_tree_size: int
    witnessed: bool
    def __init__(self, first_tree_size: _Optional[int] = ..., witnessed: _Optional[bool] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "consistency_proof")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bytes
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, checkpoint: _Optional[bytes] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("leaf_index", "tree_size")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetInclusionProofByHashRequest(_message.Message):
    __slots__ = ("leaf_hash", "tree_size")
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    leaf_hash: bytes
    tree_size: int
    def __init__(self, leaf_hash: _Optional[bytes] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetInclusionProofResponse(_message.Message):
    __slots__ = ("leaf_index", "tree_size", "inclusion_proof")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("first_tree_size", "second_tree_size")
    FIRST_TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECOND_TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    first_tree_size: int
    second_tree_size: int
    def __init__(self, first_tree_size: _Optional[int] = ..., second_tree_size: _Optional[int] = ...) -> None: ...

class GetConsistencyProofResponse(_message.Message):
    __slots__ = ("consistency_proof",)
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "end", "tree_size", "page_size")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    tree_size: int
    page_size: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., tree_size: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class EntriesPage(_message.Message):
    __slots__ = ("start", "leaves", "range_proof")
    START_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    RANGE_PROOF_FIELD_NUMBER: _ClassVar[int]
    start: int
    leaves: _containers.RepeatedScalarFieldContainer[bytes]
    range_proof: RangeProof
    def __init__(self, start: _Optional[int] = ..., leaves: _Optional[_Iterable[bytes]] = ..., range_proof: _Optional[_Union[RangeProof, _Mapping]] = ...) -> None: ...

class GetEntryAndProofRequest(_message.Message):
    __slots__ = ("leaf_index", "tree_size")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetEntryAndProofResponse(_message.Message):
    __slots__ = ("leaf_index", "tree_size", "leaf", "inclusion_proof")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    leaf: bytes
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., leaf: _Optional[bytes] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AddCosignatureRequest(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bytes
    def __init__(self, checkpoint: _Optional[bytes] = ...) -> None: ...

class AddCosignatureResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bytes
    def __init__(self, checkpoint: _Optional[bytes] = ...) -> None: ...

class SearchEntriesRequest(_message.Message):
    __slots__ = ("identity", "since_ms", "until_ms", "tree_size", "start_index", "page_size")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    identity: str
    since_ms: int
    until_ms: int
    tree_size: int
    start_index: int
    page_size: int
    def __init__(self, identity: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., tree_size: _Optional[int] = ..., start_index: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("index", "leaf", "inclusion_proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    leaf: bytes
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., leaf: _Optional[bytes] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SearchEntriesResponse(_message.Message):
    __slots__ = ("results", "next_start_index")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_INDEX_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    next_start_index: int
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., next_start_index: _Optional[int] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("identities", "api_keys")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    identities: int
    api_keys: int
    def __init__(self, identities: _Optional[int] = ..., api_keys: _Optional[int] = ...) -> None: ...
