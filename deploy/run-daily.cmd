@echo off
rem Windows Task Scheduler: "Start a program" = this file. A second run on the same data folder exits 10.
rem Task Scheduler starts in System32, so change to the project folder first.
cd /d C:\cms-hospitals
.venv\Scripts\luigi.exe --module pipeline HospitalsDaily --workers 8 >> logs\daily.log 2>&1
exit /b %ERRORLEVEL%
