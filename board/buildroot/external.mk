include $(sort $(wildcard $(BR2_EXTERNAL_STORYBOT_PATH)/package/*/*.mk))
