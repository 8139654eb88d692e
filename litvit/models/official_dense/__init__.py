"""The LIT authors' released dense models (mmdet 2.11 / mmseg 0.13), run with litvit's modules.

*Less is More: Pay Less Attention in Vision Transformers* (Pan et al., AAAI 2022) reports
RetinaNet, Mask R-CNN (COCO) and Semantic FPN (ADE20K) with LIT-Ti and LIT-S backbones; the
authors released the six models in the format of their mmdetection / mmsegmentation forks, which
need mmcv-full and a CUDA-compiled deformable convolution. Here they load from the file alone
and compute what the authors' test code computes, on CPU or GPU, with nothing to compile:

* :func:`load_dense` (:mod:`.load`): the model of a release file, in eval mode, with its classes
  (and palette); ``model.predict(image)`` gives the detections / label map of an RGB image as
  ``inference_detector`` / ``inference_segmentor`` do; a release name (:data:`RELEASES`:
  ``retina_lit_ti``, ...) is downloaded once into torch hub's cache (:func:`release_file`);
  :func:`is_release` tells a read checkpoint in mmcv's format from litvit's own;
* :mod:`.backbone`: the authors' dense LIT-Ti / LIT-S on litvit's :class:`~litvit.models.LIT`;
* :mod:`.heads`: FPN, RetinaHead, RPN and RoI heads, Semantic FPN head, anchors, box coder, NMS;
* :mod:`.models`: :class:`RetinaNet`, :class:`MaskRCNN`, :class:`SemanticFPN` (test-time flow);
* :mod:`.preprocess`: the test pipeline (OpenCV's uint8 bilinear resize reproduced exactly);
* :mod:`.config`: the release's config text, parsed without running it;
* :mod:`.training`: what mmdet 2.11's ``forward_train`` computes: ``RetinaNet.forward_train`` /
  ``MaskRCNN.forward_train`` (padded batch, ``img_metas`` with ``img_shape`` / ``pad_shape``, boxes,
  labels, masks) return the authors' losses (MaxIoUAssigner, RandomSampler, anchor and RoI targets,
  focal / cross-entropy / L1 / mask losses with mmdet's averaging), with ``model.train_cfg`` and
  ``model.loss_cfg`` read from the release's config or the authors' values; ``init_weights()``
  initialises the neck and heads as mmdet 2.11 does;
* :mod:`.seg_train`: Semantic FPN's training semantics (mmseg 0.13's initialisation and loss);
* :mod:`.finetune`: :func:`start_from_checkpoint`, the model of a release or a litvit dense
  checkpoint built from its weights, with a new classifier when the classes differ (fine-tuning);
  :func:`model_from_state_dict`; :func:`init_from_checkpoint` (weights copied into a built model).

``tests/test_official_dense.py`` checks every stage against outputs of the authors' own code,
``tests/test_dense_training.py`` the training losses, gradients and initialisation.

Examples::
    >>> from litvit.models.official_dense import load_dense
    >>> model = load_dense('mask_rcnn_lit_ti.pth')  # doctest: +SKIP
    >>> out = model.predict(image)  # doctest: +SKIP
    >>> out['boxes'], out['scores'], out['labels'], out['masks']  # doctest: +SKIP
"""
from typing import Any, Dict

from torch import Tensor

from .backbone import ReleaseBackbone, build_release_backbone
from .config import parse_config
from .finetune import CLASSIFIERS, init_from_checkpoint, model_from_state_dict, start_from_checkpoint
from .load import RELEASES, build_dense, dense_from_checkpoint, is_release, load_dense, release_file, release_kind
from .models import DenseRelease, MaskRCNN, RetinaNet, SemanticFPN
from .preprocess import TestPipeline, preprocess, resize_bilinear_u8
from .seg_train import init_semantic_fpn_, segmentation_loss

__all__ = ["load_dense", "predict", "build_dense", "release_kind", "is_release", "release_file", "dense_from_checkpoint",
           "RELEASES", "DenseRelease", "RetinaNet", "MaskRCNN",
           "SemanticFPN", "ReleaseBackbone", "build_release_backbone", "parse_config", "TestPipeline", "preprocess",
           "resize_bilinear_u8", "init_from_checkpoint", "start_from_checkpoint", "model_from_state_dict", "CLASSIFIERS", "init_semantic_fpn_", "segmentation_loss"]


def predict(model: DenseRelease, image: Any) -> Dict[str, Tensor]:
    """``model.predict(image)``: detections (``boxes``, ``scores``, ``labels``, ``masks``) or the
    label map (``labels``) of one (H, W, 3) uint8 RGB image, as the authors' inference gives them."""
    return model.predict(image)
