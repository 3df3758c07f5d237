"""Evaluation protocols on frozen or fine-tuned encoders: feature extraction and caching
(``features``), exact cosine KNN (``knn``), the linear probe (``linear``), stratified label
subsets (``subset``) and multi-stream score fusion (``fusion``)."""
