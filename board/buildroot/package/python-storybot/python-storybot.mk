################################################################################
#
# python-storybot: the robot package in ABI mode, the storybot command and the
# BusyBox init script, from the same source tree as the storybot package
#
################################################################################

PYTHON_STORYBOT_VERSION = 0.1.0
PYTHON_STORYBOT_SITE = $(BR2_EXTERNAL_STORYBOT_PATH)/../..
PYTHON_STORYBOT_SITE_METHOD = local
PYTHON_STORYBOT_LICENSE = MIT
PYTHON_STORYBOT_DEPENDENCIES = python3 storybot

# this package's own files (the storybot command)
PYTHON_STORYBOT_FILES = $(BR2_EXTERNAL_STORYBOT_PATH)/package/python-storybot
PYTHON_STORYBOT_PKGDIR = $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/robot

# Plain files, no setup.py: setup.py would build the API-mode extension, which the
# board does not need (ABI mode), and it would need host cffi and the sources.
# buildroot compiles the .py files to bytecode when it finalizes the target.
define PYTHON_STORYBOT_INSTALL_TARGET_CMDS
	mkdir -p $(PYTHON_STORYBOT_PKGDIR)/data
	for f in $(@D)/robot/*.py; do \
		case $${f##*/} in _build.py) ;; *) $(INSTALL) -m 0644 $$f $(PYTHON_STORYBOT_PKGDIR)/ ;; esac; \
	done
	$(INSTALL) -m 0644 $(@D)/robot/data/* $(PYTHON_STORYBOT_PKGDIR)/data/
	$(INSTALL) -m 0644 $(@D)/native/include/storybot.h $(PYTHON_STORYBOT_PKGDIR)/storybot.h
	ln -sf /usr/lib/libstorybot.so $(PYTHON_STORYBOT_PKGDIR)/libstorybot.so
	$(INSTALL) -D -m 0755 $(PYTHON_STORYBOT_FILES)/storybot $(TARGET_DIR)/usr/bin/storybot
	$(INSTALL) -D -m 0755 $(@D)/systemd/S99storybot $(TARGET_DIR)/etc/init.d/S99storybot
	$(INSTALL) -D -m 0644 $(@D)/systemd/storybot.env $(TARGET_DIR)/etc/storybot/storybot.env
	printf '%s\n' '# --- buildroot: the storybot package installs the model here' \
		'STORYBOT_MODELS=/usr/share/storybot/models' \
		'STORYBOT_MODEL=stories15M.board.bin' >> $(TARGET_DIR)/etc/storybot/storybot.env
endef

$(eval $(generic-package))
