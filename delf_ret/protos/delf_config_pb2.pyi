from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DelfPcaParameters(_message.Message):
    __slots__ = ("mean_path", "projection_matrix_path", "pca_dim", "use_whitening", "pca_variances_path")
    MEAN_PATH_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_MATRIX_PATH_FIELD_NUMBER: _ClassVar[int]
    PCA_DIM_FIELD_NUMBER: _ClassVar[int]
    USE_WHITENING_FIELD_NUMBER: _ClassVar[int]
    PCA_VARIANCES_PATH_FIELD_NUMBER: _ClassVar[int]
    mean_path: str
    projection_matrix_path: str
    pca_dim: int
    use_whitening: bool
    pca_variances_path: str
    def __init__(self, mean_path: _Optional[str] = ..., projection_matrix_path: _Optional[str] = ..., pca_dim: _Optional[int] = ..., use_whitening: bool = ..., pca_variances_path: _Optional[str] = ...) -> None: ...

class DelfLocalFeatureConfig(_message.Message):
    __slots__ = ("use_pca", "layer_name", "iou_threshold", "max_feature_num", "score_threshold", "pca_parameters", "use_resized_coordinates")
    USE_PCA_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURE_NUM_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PCA_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USE_RESIZED_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    use_pca: bool
    layer_name: str
    iou_threshold: float
    max_feature_num: int
    score_threshold: float
    pca_parameters: DelfPcaParameters
    use_resized_coordinates: bool
    def __init__(self, use_pca: bool = ..., layer_name: _Optional[str] = ..., iou_threshold: _Optional[float] = ..., max_feature_num: _Optional[int] = ..., score_threshold: _Optional[float] = ..., pca_parameters: _Optional[_Union[DelfPcaParameters, _Mapping]] = ..., use_resized_coordinates: bool = ...) -> None: ...

class DelfGlobalConfig(_message.Message):
    __slots__ = ("use_pca", "pca_parameters", "image_scales_ind")
    USE_PCA_FIELD_NUMBER: _ClassVar[int]
    PCA_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SCALES_IND_FIELD_NUMBER: _ClassVar[int]
    use_pca: bool
    pca_parameters: DelfPcaParameters
    image_scales_ind: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, use_pca: bool = ..., pca_parameters: _Optional[_Union[DelfPcaParameters, _Mapping]] = ..., image_scales_ind: _Optional[_Iterable[int]] = ...) -> None: ...

class DelfRetrievalConfig(_message.Message):
    __slots__ = ("index_type", "nlist", "pq_m", "pq_nbits", "hnsw_m", "nprobe", "ef_search", "train_sample_size", "neighbors_per_descriptor", "vote_weighting", "rerank_top_n", "min_inliers", "match_distance_threshold", "ransac_transform", "ransac_residual_threshold", "ransac_max_trials", "eval_ks", "match_ratio_threshold", "match_mutual", "ransac_stop_probability", "ransac_seed", "ransac_backend", "rerank_skip_junk", "pq_fast_scan", "coarse_quantizer", "recognition_top_k", "recognition_min_score", "asmk_codebook_size", "asmk_binary", "asmk_alpha", "asmk_similarity_threshold", "asmk_query_assignments", "asmk_database_assignments", "asmk_kmeans_iterations", "first_stage", "ransac_method", "min_inlier_spread", "rerank_min_inliers")
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    PQ_M_FIELD_NUMBER: _ClassVar[int]
    PQ_NBITS_FIELD_NUMBER: _ClassVar[int]
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_PER_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    VOTE_WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOP_N_FIELD_NUMBER: _ClassVar[int]
    MIN_INLIERS_FIELD_NUMBER: _ClassVar[int]
    MATCH_DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RANSAC_TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    RANSAC_RESIDUAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RANSAC_MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    EVAL_KS_FIELD_NUMBER: _ClassVar[int]
    MATCH_RATIO_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MATCH_MUTUAL_FIELD_NUMBER: _ClassVar[int]
    RANSAC_STOP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RANSAC_SEED_FIELD_NUMBER: _ClassVar[int]
    RANSAC_BACKEND_FIELD_NUMBER: _ClassVar[int]
    RERANK_SKIP_JUNK_FIELD_NUMBER: _ClassVar[int]
    PQ_FAST_SCAN_FIELD_NUMBER: _ClassVar[int]
    COARSE_QUANTIZER_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_TOP_K_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    ASMK_CODEBOOK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASMK_BINARY_FIELD_NUMBER: _ClassVar[int]
    ASMK_ALPHA_FIELD_NUMBER: _ClassVar[int]
    ASMK_SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ASMK_QUERY_ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ASMK_DATABASE_ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ASMK_KMEANS_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    FIRST_STAGE_FIELD_NUMBER: _ClassVar[int]
    RANSAC_METHOD_FIELD_NUMBER: _ClassVar[int]
    MIN_INLIER_SPREAD_FIELD_NUMBER: _ClassVar[int]
    RERANK_MIN_INLIERS_FIELD_NUMBER: _ClassVar[int]
    index_type: str
    nlist: int
    pq_m: int
    pq_nbits: int
    hnsw_m: int
    nprobe: int
    ef_search: int
    train_sample_size: int
    neighbors_per_descriptor: int
    vote_weighting: str
    rerank_top_n: int
    min_inliers: int
    match_distance_threshold: float
    ransac_transform: str
    ransac_residual_threshold: float
    ransac_max_trials: int
    eval_ks: _containers.RepeatedScalarFieldContainer[int]
    match_ratio_threshold: float
    match_mutual: bool
    ransac_stop_probability: float
    ransac_seed: int
    ransac_backend: str
    rerank_skip_junk: bool
    pq_fast_scan: bool
    coarse_quantizer: str
    recognition_top_k: int
    recognition_min_score: float
    asmk_codebook_size: int
    asmk_binary: bool
    asmk_alpha: float
    asmk_similarity_threshold: float
    asmk_query_assignments: int
    asmk_database_assignments: int
    asmk_kmeans_iterations: int
    first_stage: str
    ransac_method: str
    min_inlier_spread: float
    rerank_min_inliers: int
    def __init__(self, index_type: _Optional[str] = ..., nlist: _Optional[int] = ..., pq_m: _Optional[int] = ..., pq_nbits: _Optional[int] = ..., hnsw_m: _Optional[int] = ..., nprobe: _Optional[int] = ..., ef_search: _Optional[int] = ..., train_sample_size: _Optional[int] = ..., neighbors_per_descriptor: _Optional[int] = ..., vote_weighting: _Optional[str] = ..., rerank_top_n: _Optional[int] = ..., min_inliers: _Optional[int] = ..., match_distance_threshold: _Optional[float] = ..., ransac_transform: _Optional[str] = ..., ransac_residual_threshold: _Optional[float] = ..., ransac_max_trials: _Optional[int] = ..., eval_ks: _Optional[_Iterable[int]] = ..., match_ratio_threshold: _Optional[float] = ..., match_mutual: bool = ..., ransac_stop_probability: _Optional[float] = ..., ransac_seed: _Optional[int] = ..., ransac_backend: _Optional[str] = ..., rerank_skip_junk: bool = ..., pq_fast_scan: bool = ..., coarse_quantizer: _Optional[str] = ..., recognition_top_k: _Optional[int] = ..., recognition_min_score: _Optional[float] = ..., asmk_codebook_size: _Optional[int] = ..., asmk_binary: bool = ..., asmk_alpha: _Optional[float] = ..., asmk_similarity_threshold: _Optional[float] = ..., asmk_query_assignments: _Optional[int] = ..., asmk_database_assignments: _Optional[int] = ..., asmk_kmeans_iterations: _Optional[int] = ..., first_stage: _Optional[str] = ..., ransac_method: _Optional[str] = ..., min_inlier_spread: _Optional[float] = ..., rerank_min_inliers: _Optional[int] = ...) -> None: ...

class DelfConfig(_message.Message):
    __slots__ = ("model_path", "image_scales", "delf_local_config", "max_image_size", "min_image_size", "min_scaled_side", "max_image_pixels", "use_square_images", "use_local_features", "use_global_features", "delf_global_config", "is_tf2_exported", "retrieval_config")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SCALES_FIELD_NUMBER: _ClassVar[int]
    DELF_LOCAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SCALED_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    USE_SQUARE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    USE_LOCAL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    USE_GLOBAL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    DELF_GLOBAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    IS_TF2_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    image_scales: _containers.RepeatedScalarFieldContainer[float]
    delf_local_config: DelfLocalFeatureConfig
    max_image_size: int
    min_image_size: int
    min_scaled_side: int
    max_image_pixels: int
    use_square_images: bool
    use_local_features: bool
    use_global_features: bool
    delf_global_config: DelfGlobalConfig
    is_tf2_exported: bool
    retrieval_config: DelfRetrievalConfig
    def __init__(self, model_path: _Optional[str] = ..., image_scales: _Optional[_Iterable[float]] = ..., delf_local_config: _Optional[_Union[DelfLocalFeatureConfig, _Mapping]] = ..., max_image_size: _Optional[int] = ..., min_image_size: _Optional[int] = ..., min_scaled_side: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., use_square_images: bool = ..., use_local_features: bool = ..., use_global_features: bool = ..., delf_global_config: _Optional[_Union[DelfGlobalConfig, _Mapping]] = ..., is_tf2_exported: bool = ..., retrieval_config: _Optional[_Union[DelfRetrievalConfig, _Mapping]] = ...) -> None: ...
