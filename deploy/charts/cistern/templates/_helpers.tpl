{{/* The cistern image. */}}
{{- define "cistern.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "cistern.labels" -}}
app.kubernetes.io/name: cistern
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* The socket directory of the node plugin on the host. */}}
{{- define "cistern.pluginDir" -}}
{{ .Values.node.kubeletDir }}/plugins/cistern.csi.dev
{{- end -}}

{{/* Dataset host paths as volumes (name datasets-N). */}}
{{- define "cistern.datasetVolumes" -}}
{{- range $i, $p := .Values.datasetHostPaths }}
- name: datasets-{{ $i }}
  hostPath: {path: {{ $p | quote }}, type: DirectoryOrCreate}
{{- end }}
{{- end -}}

{{/* Dataset host paths as volume mounts, at the same paths. */}}
{{- define "cistern.datasetMounts" -}}
{{- range $i, $p := .Values.datasetHostPaths }}
- {name: datasets-{{ $i }}, mountPath: {{ $p | quote }}, mountPropagation: HostToContainer}
{{- end }}
{{- end -}}
