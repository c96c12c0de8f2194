"""Deleting one name of a read-only file on Windows without making the file writable under its other names.

NTFS keeps the read-only attribute on the file, not on the name: `latest/X.csv` and the archived
`normalized.csv` it links to share it. Clearing it to delete (or replace) the `latest/` name would leave the
archived version writable for good. So the name is deleted through one handle: attribute off, delete on close,
attribute back on, close. The attribute is never off for any other handle's operation, and the file keeps it
under every remaining name. (Windows 10's FileDispositionInfoEx with IGNORE_READONLY_ATTRIBUTE would do it in
one call, but not on FAT volumes or older systems; this works on all of them.)
"""

import ctypes
import os
from pathlib import Path

_DELETE = 0x00010000
_FILE_READ_ATTRIBUTES = 0x0080
_FILE_WRITE_ATTRIBUTES = 0x0100
_SHARE_ALL = 0x1 | 0x2 | 0x4  # read, write, delete: as permissive as a plain DeleteFile
_OPEN_EXISTING = 3
_FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000  # a link's own name, never what it points to
_FILE_BASIC_INFO = 0
_FILE_DISPOSITION_INFO = 4
_FILE_ATTRIBUTE_NORMAL = 0x80
_INVALID_HANDLE = ctypes.c_void_p(-1).value


class _BasicInfo(ctypes.Structure):
    _fields_ = [
        ("creation_time", ctypes.c_int64),
        ("last_access_time", ctypes.c_int64),
        ("last_write_time", ctypes.c_int64),
        ("change_time", ctypes.c_int64),
        ("attributes", ctypes.c_uint32),
    ]


def _kernel32():
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.CreateFileW.restype = ctypes.c_void_p
    kernel32.CreateFileW.argtypes = [
        ctypes.c_wchar_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    kernel32.SetFileInformationByHandle.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    return kernel32


def _set(kernel32, handle, info_class: int, info) -> None:
    if not kernel32.SetFileInformationByHandle(handle, info_class, ctypes.byref(info), ctypes.sizeof(info)):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]


def delete_name(path: Path) -> None:
    """Delete `path`, read-only or not, leaving the file's attributes as they were under its other names."""
    attributes = os.stat(path, follow_symlinks=False).st_file_attributes  # type: ignore[attr-defined]
    kernel32 = _kernel32()
    access = _DELETE | _FILE_READ_ATTRIBUTES | _FILE_WRITE_ATTRIBUTES
    handle = kernel32.CreateFileW(
        str(path), access, _SHARE_ALL, None, _OPEN_EXISTING, _FILE_FLAG_OPEN_REPARSE_POINT, None
    )
    if handle in (None, _INVALID_HANDLE):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    try:
        # Zero times mean "leave as they are"; only the attribute changes.
        _set(kernel32, handle, _FILE_BASIC_INFO, _BasicInfo(0, 0, 0, 0, _FILE_ATTRIBUTE_NORMAL))
        try:
            _set(kernel32, handle, _FILE_DISPOSITION_INFO, ctypes.c_ubyte(1))  # deleted when the handle closes
        finally:
            _set(kernel32, handle, _FILE_BASIC_INFO, _BasicInfo(0, 0, 0, 0, attributes or _FILE_ATTRIBUTE_NORMAL))
    finally:
        kernel32.CloseHandle(handle)
