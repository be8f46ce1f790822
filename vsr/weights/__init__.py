"""Pretrained weights: the zoo, the ncnn converter, weight-file loading and the cache."""
