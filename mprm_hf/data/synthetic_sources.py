"""The shape of VisualPRM400K-v1.1-Raw per annotation file, which the synthetic world imitates.

Measured by a public scan over about 3000 rollouts per file: ``records`` is the scan's sample size (used
as the relative size of the file), ``body_per_rec`` the mean number of non-final steps per rollout and
``words_per_step`` the mean words per step. Kept in the package so a fresh install needs no data files.
"""

from __future__ import annotations

from typing import NamedTuple


class SourceShape(NamedTuple):
    records: int
    body_per_rec: float
    words_per_step: float


FULL_SIZE_ROLLOUTS = 565_149
"""Rollouts in the real VisualPRM400K-v1.1-Raw (38 files)."""

SOURCE_SHAPES: dict[str, SourceShape] = {
    "CLEVR_math_en_20240402_extracted": SourceShape(2990, 4.213, 22.2),
    "MathV360K_prompts": SourceShape(2990, 4.159, 26.3),
    "SROIE_information_extraction_multi_turn_20240620_extracted": SourceShape(2999, 4.04, 20.64),
    "ai2d_train_12k_en_20240410_extracted": SourceShape(3000, 4.171, 32.61),
    "chartqa_trainval_30k_w_csv_en_20240402_extracted": SourceShape(2999, 3.937, 24.77),
    "cocorem_exist_yorn_en_20241016": SourceShape(2994, 3.049, 34.78),
    "docvqa_train_56k_en_20240402_extracted": SourceShape(2994, 3.675, 22.76),
    "dvqa_en_20240402_extracted_int_only": SourceShape(2999, 4.151, 22.95),
    "figureqa_en_20240402_extracted": SourceShape(2998, 4.64, 30.3),
    "geo170k_extracted_full": SourceShape(2976, 5.707, 28.19),
    "geometry3k_en_20240402_extracted": SourceShape(2998, 6.267, 23.63),
    "geometry3k_en_20240402_extracted_open_ended_only": SourceShape(2999, 6.422, 24.15),
    "geomverse_extracted": SourceShape(2274, 6.638, 28.9),
    "geoqa+_en_20240402_extracted_open_ended_only": SourceShape(2899, 4.408, 14.24),
    "geoqa+_extracted_en_version": SourceShape(2986, 5.28, 28.7),
    "geos_en_20240402_extracted": SourceShape(1827, 8.221, 46.91),
    "geos_en_20240402_extracted_open_ended_only": SourceShape(178, 7.781, 36.84),
    "iconqa_train_extracted": SourceShape(2995, 3.865, 22.77),
    "infographics_20240403_qa_20240407_v2_extracted": SourceShape(2993, 3.673, 25.91),
    "koniq10k_en_20240403": SourceShape(3000, 5.169, 34.49),
    "m3cot_train_extracted": SourceShape(2995, 4.99, 28.68),
    "mapqa_suv_en_20240402_extracted": SourceShape(2091, 4.083, 25.96),
    "mavis_function_abs": SourceShape(3000, 7.708, 39.8),
    "mavis_function_cos": SourceShape(2993, 6.722, 37.21),
    "mavis_function_log": SourceShape(2993, 7.325, 36.1),
    "mavis_function_poly": SourceShape(3000, 6.852, 30.14),
    "mavis_function_sin": SourceShape(2995, 6.632, 36.4),
    "mavis_function_tan": SourceShape(2999, 6.789, 37.25),
    "mavis_geo_depth0_text_dominant_vision_dominant_en": SourceShape(2613, 2.646, 34.52),
    "mavis_geo_depth1_text_dominant_vision_dominant_en": SourceShape(2522, 3.375, 36.0),
    "mavis_geo_depth2_text_dominant_vision_dominant_en": SourceShape(2571, 3.609, 38.62),
    "mavis_geo_depth3_text_dominant_vision_dominant_en": SourceShape(2650, 4.327, 37.01),
    "nlvr2_en_20240910": SourceShape(2974, 2.211, 30.18),
    "scienceqa_multi_choice_en_20240402_extracted": SourceShape(2998, 4.387, 28.44),
    "super_clevr_en_20240402_int": SourceShape(1738, 3.41, 31.52),
    "super_clevr_en_20240402_yorn": SourceShape(1721, 2.837, 32.11),
    "unigeo_calc_en_20240402_extracted_open_ended_only": SourceShape(2859, 4.685, 17.06),
    "vqav2_en_20240402_int": SourceShape(2994, 2.967, 25.98),
}
