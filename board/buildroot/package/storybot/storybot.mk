################################################################################
#
# storybot: the native library and CLI, from the storybot source tree this
# external tree lives in (board/buildroot/ of it)
#
################################################################################

STORYBOT_VERSION = 0.1.0
STORYBOT_SITE = $(BR2_EXTERNAL_STORYBOT_PATH)/../..
STORYBOT_SITE_METHOD = local
STORYBOT_LICENSE = MIT
STORYBOT_INSTALL_STAGING = YES

STORYBOT_BUILD = build/buildroot
STORYBOT_CFLAGS = $(TARGET_CFLAGS) -O3
ifeq ($(BR2_PACKAGE_STORYBOT_XTHEADVECTOR),y)
STORYBOT_CFLAGS += -march=rv64gc_xtheadvector -mabi=lp64d
endif

define STORYBOT_BUILD_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D)/native BUILD=$(STORYBOT_BUILD) \
		CC="$(TARGET_CC)" AR="$(TARGET_AR)" CFLAGS="$(STORYBOT_CFLAGS)" \
		LDFLAGS="$(TARGET_LDFLAGS)" \
		$(STORYBOT_BUILD)/libstorybot.so $(STORYBOT_BUILD)/storybot-run \
		$(STORYBOT_BUILD)/storybot-bench
endef

define STORYBOT_INSTALL_STAGING_CMDS
	$(INSTALL) -D -m 0644 $(@D)/native/include/storybot.h $(STAGING_DIR)/usr/include/storybot.h
	$(INSTALL) -D -m 0755 $(@D)/native/$(STORYBOT_BUILD)/libstorybot.so \
		$(STAGING_DIR)/usr/lib/libstorybot.so
endef

define STORYBOT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/native/$(STORYBOT_BUILD)/libstorybot.so \
		$(TARGET_DIR)/usr/lib/libstorybot.so
	$(INSTALL) -D -m 0755 $(@D)/native/$(STORYBOT_BUILD)/storybot-run \
		$(TARGET_DIR)/usr/bin/storybot-run
	$(INSTALL) -D -m 0755 $(@D)/native/$(STORYBOT_BUILD)/storybot-bench \
		$(TARGET_DIR)/usr/bin/storybot-bench
	$(STORYBOT_INSTALL_MODELS)
endef

STORYBOT_MODELS_DIR = $(call qstrip,$(BR2_PACKAGE_STORYBOT_MODELS_DIR))
ifneq ($(STORYBOT_MODELS_DIR),)
define STORYBOT_INSTALL_MODELS
	$(INSTALL) -D -m 0644 $(STORYBOT_MODELS_DIR)/stories15M.board.bin \
		$(TARGET_DIR)/usr/share/storybot/models/stories15M.board.bin
	$(INSTALL) -D -m 0644 $(STORYBOT_MODELS_DIR)/tokenizer.bin \
		$(TARGET_DIR)/usr/share/storybot/models/tokenizer.bin
endef
endif

$(eval $(generic-package))
