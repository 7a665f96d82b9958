################################################################################
#
# python-wyoming: copied as it is, pure Python. Its sdist has no setup.py
# (pyproject.toml), which the setuptools infrastructure of the buildroot
# releases the Duo SDK is built on cannot install.
#
################################################################################

PYTHON_WYOMING_VERSION = 1.10.2
PYTHON_WYOMING_SOURCE = wyoming-$(PYTHON_WYOMING_VERSION).tar.gz
PYTHON_WYOMING_SITE = https://files.pythonhosted.org/packages/source/w/wyoming
PYTHON_WYOMING_LICENSE = MIT
PYTHON_WYOMING_LICENSE_FILES = LICENSE.md
PYTHON_WYOMING_DEPENDENCIES = python3

define PYTHON_WYOMING_INSTALL_TARGET_CMDS
	mkdir -p $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages
	cp -r $(@D)/wyoming $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/
endef

$(eval $(generic-package))
