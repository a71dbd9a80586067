# -*- coding: utf-8 -*-
"""
说话人分割项目配置
"""
import os
from pathlib import Path
from ..base import BaseProject
from src.downloaders.factory import DownloaderFactory


class SpeakerDiarizationProject(BaseProject):
    """说话人分割项目"""
    
    @property
    def name(self):
        return "speaker-diarization"
    
    @property
    def models_remote_prefix(self):
        """模型在 Volume 中的子目录"""
        return 'speaker-reg'  # 保持与现有上传脚本一致
    
    @property
    def local_models_dir(self):
        """本地模型目录（可选）"""
        # 返回 None，通过命令行参数指定（推荐）
        return None
    
    @property
    def models(self):
        return {
            'modelscope': [
                "iic/speech_campplus_speaker-diarization_common",
                "damo/speech_fsmn_vad_zh-cn-16k-common-pytorch",
                "damo/speech_campplus_sv_zh-cn_16k-common",
                "damo/speech_campplus-transformer_scl_zh-cn_16k-common",
            ]
        }
