from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatumShape(_message.Message):
    __slots__ = ("dim",)
    DIM_FIELD_NUMBER: _ClassVar[int]
    dim: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dim: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, value: _Optional[_Iterable[float]] = ...) -> None: ...

class DatumProto(_message.Message):
    __slots__ = ("shape", "float_list")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_LIST_FIELD_NUMBER: _ClassVar[int]
    shape: DatumShape
    float_list: FloatList
    def __init__(self, shape: _Optional[_Union[DatumShape, _Mapping]] = ..., float_list: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class DelfFeature(_message.Message):
    __slots__ = ("descriptor", "x", "y", "scale", "orientation", "strength")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    descriptor: DatumProto
    x: float
    y: float
    scale: float
    orientation: float
    strength: float
    def __init__(self, descriptor: _Optional[_Union[DatumProto, _Mapping]] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., scale: _Optional[float] = ..., orientation: _Optional[float] = ..., strength: _Optional[float] = ...) -> None: ...

class DelfFeatures(_message.Message):
    __slots__ = ("feature",)
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    feature: _containers.RepeatedCompositeFieldContainer[DelfFeature]
    def __init__(self, feature: _Optional[_Iterable[_Union[DelfFeature, _Mapping]]] = ...) -> None: ...
