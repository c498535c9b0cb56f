from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DelfTrainingConfig(_message.Message):
    __slots__ = ("batch_size", "image_size", "tuning_learning_rate", "attention_learning_rate", "momentum", "max_steps", "clip_gradient_norm", "attention_loss_weight", "save_every", "max_checkpoints", "summary_every", "seed", "shuffle_buffer", "backbone_weights", "selfsup", "deterministic", "min_crop_area", "tuning_frozen_stages", "attention_max_steps")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TUNING_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LOSS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SAVE_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_BUFFER_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SELFSUP_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    MIN_CROP_AREA_FIELD_NUMBER: _ClassVar[int]
    TUNING_FROZEN_STAGES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    image_size: int
    tuning_learning_rate: float
    attention_learning_rate: float
    momentum: float
    max_steps: int
    clip_gradient_norm: float
    attention_loss_weight: float
    save_every: int
    max_checkpoints: int
    summary_every: int
    seed: int
    shuffle_buffer: int
    backbone_weights: str
    selfsup: SelfSupervisedConfig
    deterministic: bool
    min_crop_area: float
    tuning_frozen_stages: int
    attention_max_steps: int
    def __init__(self, batch_size: _Optional[int] = ..., image_size: _Optional[int] = ..., tuning_learning_rate: _Optional[float] = ..., attention_learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., max_steps: _Optional[int] = ..., clip_gradient_norm: _Optional[float] = ..., attention_loss_weight: _Optional[float] = ..., save_every: _Optional[int] = ..., max_checkpoints: _Optional[int] = ..., summary_every: _Optional[int] = ..., seed: _Optional[int] = ..., shuffle_buffer: _Optional[int] = ..., backbone_weights: _Optional[str] = ..., selfsup: _Optional[_Union[SelfSupervisedConfig, _Mapping]] = ..., deterministic: bool = ..., min_crop_area: _Optional[float] = ..., tuning_frozen_stages: _Optional[int] = ..., attention_max_steps: _Optional[int] = ...) -> None: ...

class SelfSupervisedConfig(_message.Message):
    __slots__ = ("pairs_per_batch", "crop_size", "real_pair_fraction", "learning_rate", "warmup_steps", "max_steps", "temperature", "attention_loss_weight", "photo_max_side", "min_photo_scale", "max_photo_scale", "max_rotation_deg", "min_zoom", "max_zoom", "max_perspective", "max_shift", "brightness", "contrast", "gamma", "colour", "blur_probability", "noise_std", "max_pair_gap", "min_pair_matches", "max_epipolar_px", "use_skimage_photos", "attention_steps", "attention_learning_rate", "attention_neighbourhood", "negative_exclusion_radius", "attention_against_batch", "reinit_attention_head")
    PAIRS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    REAL_PAIR_FRACTION_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LOSS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PHOTO_MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    MIN_PHOTO_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_PHOTO_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROTATION_DEG_FIELD_NUMBER: _ClassVar[int]
    MIN_ZOOM_FIELD_NUMBER: _ClassVar[int]
    MAX_ZOOM_FIELD_NUMBER: _ClassVar[int]
    MAX_PERSPECTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHIFT_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    COLOUR_FIELD_NUMBER: _ClassVar[int]
    BLUR_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIR_GAP_FIELD_NUMBER: _ClassVar[int]
    MIN_PAIR_MATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_EPIPOLAR_PX_FIELD_NUMBER: _ClassVar[int]
    USE_SKIMAGE_PHOTOS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_STEPS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_NEIGHBOURHOOD_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_EXCLUSION_RADIUS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_AGAINST_BATCH_FIELD_NUMBER: _ClassVar[int]
    REINIT_ATTENTION_HEAD_FIELD_NUMBER: _ClassVar[int]
    pairs_per_batch: int
    crop_size: int
    real_pair_fraction: float
    learning_rate: float
    warmup_steps: int
    max_steps: int
    temperature: float
    attention_loss_weight: float
    photo_max_side: int
    min_photo_scale: float
    max_photo_scale: float
    max_rotation_deg: float
    min_zoom: float
    max_zoom: float
    max_perspective: float
    max_shift: float
    brightness: float
    contrast: float
    gamma: float
    colour: float
    blur_probability: float
    noise_std: float
    max_pair_gap: int
    min_pair_matches: int
    max_epipolar_px: float
    use_skimage_photos: bool
    attention_steps: int
    attention_learning_rate: float
    attention_neighbourhood: int
    negative_exclusion_radius: int
    attention_against_batch: bool
    reinit_attention_head: bool
    def __init__(self, pairs_per_batch: _Optional[int] = ..., crop_size: _Optional[int] = ..., real_pair_fraction: _Optional[float] = ..., learning_rate: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., max_steps: _Optional[int] = ..., temperature: _Optional[float] = ..., attention_loss_weight: _Optional[float] = ..., photo_max_side: _Optional[int] = ..., min_photo_scale: _Optional[float] = ..., max_photo_scale: _Optional[float] = ..., max_rotation_deg: _Optional[float] = ..., min_zoom: _Optional[float] = ..., max_zoom: _Optional[float] = ..., max_perspective: _Optional[float] = ..., max_shift: _Optional[float] = ..., brightness: _Optional[float] = ..., contrast: _Optional[float] = ..., gamma: _Optional[float] = ..., colour: _Optional[float] = ..., blur_probability: _Optional[float] = ..., noise_std: _Optional[float] = ..., max_pair_gap: _Optional[int] = ..., min_pair_matches: _Optional[int] = ..., max_epipolar_px: _Optional[float] = ..., use_skimage_photos: bool = ..., attention_steps: _Optional[int] = ..., attention_learning_rate: _Optional[float] = ..., attention_neighbourhood: _Optional[int] = ..., negative_exclusion_radius: _Optional[int] = ..., attention_against_batch: bool = ..., reinit_attention_head: bool = ...) -> None: ...
