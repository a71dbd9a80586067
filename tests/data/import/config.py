"""A project config as runpod-model-manager keeps one; gpulock reads it, never runs it."""
raise SystemExit("this file must not be executed by gpulock import")


class SpeakerDiarizationProject:
    @property
    def models(self):
        return {
            "modelscope": [
                "iic/speech_campplus_speaker-diarization_common",
                "damo/speech_fsmn_vad_zh-cn-16k-common-pytorch",
            ],
            "huggingface": ["pyannote/segmentation-3.0"],
        }
