"""Evaluation protocols on frozen or fine-tuned encoders: feature extraction and caching
(``features``), exact cosine KNN (``knn``), the linear probe (``linear``: the head on features;
``probe``: the run on a store), end-to-end fine-tuning (``finetune``) and the action recognition
run with its outputs (``recognition``, behind action_recognition.py), stratified label subsets
(``subset``) and multi-stream score fusion (``fusion``)."""
