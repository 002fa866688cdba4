"""The MQTT uploader (``pyv-edge-agent[mqtt]``), where the documentation imports it from;
it lives in ``delivery.mqtt``."""

from .delivery.mqtt.uploader import MQTTUploader, azure_iot_sas_token

__all__ = ["MQTTUploader", "azure_iot_sas_token"]
