from smartspec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SequenceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEQUENCE_STATUS_UNSPECIFIED: _ClassVar[SequenceStatus]
    SEQUENCE_STATUS_OK: _ClassVar[SequenceStatus]
    SEQUENCE_STATUS_UNKNOWN_SEQUENCE: _ClassVar[SequenceStatus]
    SEQUENCE_STATUS_LENGTH_MISMATCH: _ClassVar[SequenceStatus]
    SEQUENCE_STATUS_OUT_OF_CAPACITY: _ClassVar[SequenceStatus]
    SEQUENCE_STATUS_INVALID: _ClassVar[SequenceStatus]
SEQUENCE_STATUS_UNSPECIFIED: SequenceStatus
SEQUENCE_STATUS_OK: SequenceStatus
SEQUENCE_STATUS_UNKNOWN_SEQUENCE: SequenceStatus
SEQUENCE_STATUS_LENGTH_MISMATCH: SequenceStatus
SEQUENCE_STATUS_OUT_OF_CAPACITY: SequenceStatus
SEQUENCE_STATUS_INVALID: SequenceStatus

class DraftInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DraftInfoResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("step_id", "admit", "propose", "release")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    ADMIT_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    admit: Admit
    propose: Propose
    release: Release
    def __init__(self, step_id: _Optional[int] = ..., admit: _Optional[_Union[Admit, _Mapping]] = ..., propose: _Optional[_Union[Propose, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ...) -> None: ...

class Admit(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[AdmitSequence]
    def __init__(self, sequences: _Optional[_Iterable[_Union[AdmitSequence, _Mapping]]] = ...) -> None: ...

class AdmitSequence(_message.Message):
    __slots__ = ("seq_id", "token_ids", "sampling")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    def __init__(self, seq_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class Propose(_message.Message):
    __slots__ = ("sequences", "budget_ms")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[ProposeSequence]
    budget_ms: int
    def __init__(self, sequences: _Optional[_Iterable[_Union[ProposeSequence, _Mapping]]] = ..., budget_ms: _Optional[int] = ...) -> None: ...

class ProposeSequence(_message.Message):
    __slots__ = ("seq_id", "num_accepted", "new_token_ids", "committed_len", "num_speculative_tokens")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEW_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    num_accepted: int
    new_token_ids: _containers.RepeatedScalarFieldContainer[int]
    committed_len: int
    num_speculative_tokens: int
    def __init__(self, seq_id: _Optional[int] = ..., num_accepted: _Optional[int] = ..., new_token_ids: _Optional[_Iterable[int]] = ..., committed_len: _Optional[int] = ..., num_speculative_tokens: _Optional[int] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("seq_ids",)
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    seq_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SequenceResult(_message.Message):
    __slots__ = ("seq_id", "status")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    status: SequenceStatus
    def __init__(self, seq_id: _Optional[int] = ..., status: _Optional[_Union[SequenceStatus, str]] = ...) -> None: ...

class DraftProposal(_message.Message):
    __slots__ = ("seq_id", "status", "draft_token_ids", "draft_dists")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DISTS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    status: SequenceStatus
    draft_token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_dists: _containers.RepeatedCompositeFieldContainer[_common_pb2.SparseDist]
    def __init__(self, seq_id: _Optional[int] = ..., status: _Optional[_Union[SequenceStatus, str]] = ..., draft_token_ids: _Optional[_Iterable[int]] = ..., draft_dists: _Optional[_Iterable[_Union[_common_pb2.SparseDist, _Mapping]]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("step_id", "results", "proposals", "compute_ns")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_NS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    results: _containers.RepeatedCompositeFieldContainer[SequenceResult]
    proposals: _containers.RepeatedCompositeFieldContainer[DraftProposal]
    compute_ns: int
    def __init__(self, step_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[SequenceResult, _Mapping]]] = ..., proposals: _Optional[_Iterable[_Union[DraftProposal, _Mapping]]] = ..., compute_ns: _Optional[int] = ...) -> None: ...
